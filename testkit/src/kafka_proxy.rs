//! A TCP proxy in front of a broker that understands just enough of the Kafka protocol to stand
//! between a client's transactions and their commits (`EndTxn`): a fault test can let a
//! transaction's records reach the broker and then hold its commit back for as long as the test
//! needs, or answer the commit itself with a success the broker never saw. Start the broker with
//! [`OwnedBroker::start_advertising`](crate::OwnedBroker::start_advertising) so that clients come
//! back through the proxy after the bootstrap.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};

/// The Kafka API key of `EndTxn`, the request that commits or aborts a transaction.
const END_TXN: i16 = 26;

/// What the proxy does with an `EndTxn` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commits {
    /// Passes it to the broker.
    Forward,
    /// Keeps it (and what follows it on its connection) until told otherwise.
    Hold,
    /// Answers the next one with a success itself, without passing it on, then holds.
    Answer,
}

/// A running proxy; dropping it stops accepting connections.
#[derive(Debug)]
pub struct KafkaProxy {
    port: u16,
    commits: Arc<watch::Sender<Commits>>,
    accept: tokio::task::JoinHandle<()>,
}

impl KafkaProxy {
    /// Listens on `127.0.0.1:port` and forwards every connection to `upstream`.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound.
    pub async fn start(port: u16, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the proxy's port");
        let commits = Arc::new(watch::channel(Commits::Forward).0);
        let accept = tokio::spawn({
            let commits = Arc::clone(&commits);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, upstream, Arc::clone(&commits)));
                }
            }
        });
        Self {
            port,
            commits,
            accept,
        }
    }

    /// The address clients dial (`127.0.0.1:<port>`).
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds back every commit or abort (`EndTxn`), and what follows it on its connection, from
    /// now on, until [`release`](Self::release) or [`answer_commit`](Self::answer_commit).
    pub fn hold_commits(&self) {
        self.commits.send_replace(Commits::Hold);
    }

    /// Answers the next `EndTxn` (a held one first) with a success the broker never sees, then
    /// holds the ones after it until [`release`](Self::release): the client believes its
    /// transaction committed while the broker keeps it open, and aborts it once it is older than
    /// `transaction.timeout.ms` (or when the client's next `init_transactions` fences it).
    pub fn answer_commit(&self) {
        self.commits.send_replace(Commits::Answer);
    }

    /// Passes commits, held ones first, to the broker again.
    pub fn release(&self) {
        self.commits.send_replace(Commits::Forward);
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `client` to a new connection to `upstream` and back, request by request towards the
/// broker and answer by answer back, treating each `EndTxn` as `commits` says.
async fn forward(client: TcpStream, upstream: SocketAddr, commits: Arc<watch::Sender<Commits>>) {
    let Ok(broker) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let client_write = Arc::new(Mutex::new(client_write));
    let answers = tokio::spawn({
        let client_write = Arc::clone(&client_write);
        async move {
            while let Some(answer) = read_frame(&mut broker_read).await {
                if send(&client_write, &answer).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut watching = commits.subscribe();
    while let Some(request) = read_frame(&mut client_read).await {
        let answer = api_key(&request) == END_TXN && to_answer(&commits, &mut watching).await;
        let sent = if answer {
            send(&client_write, &end_txn_success(&request)).await
        } else {
            broker_write.write_all(&request).await
        };
        if sent.is_err() {
            break;
        }
    }
    answers.abort();
}

/// Waits until an `EndTxn` may go on: `true` when this one is to be answered (the proxy holds
/// the ones after it), `false` when it is to be forwarded.
async fn to_answer(
    commits: &watch::Sender<Commits>,
    watching: &mut watch::Receiver<Commits>,
) -> bool {
    loop {
        let now = match watching.wait_for(|commits| *commits != Commits::Hold).await {
            Ok(commits) => *commits,
            Err(_) => return false,
        };
        if now == Commits::Forward {
            return false;
        }
        // Several connections may wait with an `EndTxn`: one of them answers.
        let answered = commits.send_if_modified(|commits| {
            let ours = *commits == Commits::Answer;
            if ours {
                *commits = Commits::Hold;
            }
            ours
        });
        if answered {
            return true;
        }
    }
}

/// One size-prefixed protocol frame (the size included), `None` once the connection is closed.
async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).await.ok()?;
    let mut frame = size.to_vec();
    frame.resize(4 + u32::from_be_bytes(size) as usize, 0);
    from.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn send(to: &Mutex<OwnedWriteHalf>, frame: &[u8]) -> std::io::Result<()> {
    to.lock().await.write_all(frame).await
}

/// A request frame's API key (request header: size, api key, api version, correlation id, ...).
fn api_key(request: &[u8]) -> i16 {
    request
        .get(4..6)
        .map_or(-1, |key| i16::from_be_bytes([key[0], key[1]]))
}

/// The success answer to an `EndTxn` request of version 0 to 2 (the non-flexible ones, which
/// librdkafka sends): correlation id, throttle time 0, error code 0.
///
/// # Panics
///
/// On a later version, whose answer this does not know how to write.
fn end_txn_success(request: &[u8]) -> Vec<u8> {
    let version = i16::from_be_bytes([request[6], request[7]]);
    assert!(
        version <= 2,
        "the proxy answers EndTxn versions 0 to 2, not {version}"
    );
    let mut answer = 10u32.to_be_bytes().to_vec();
    answer.extend_from_slice(&request[8..12]);
    answer.extend_from_slice(&0i32.to_be_bytes());
    answer.extend_from_slice(&0i16.to_be_bytes());
    answer
}
