//! A TCP proxy in front of a broker that understands just enough of the Kafka protocol to hold
//! back one kind of request: a fault test can let a client's transaction reach the broker and
//! then keep its commit (`EndTxn`) from arriving, for as long as the test needs. Start the broker
//! with [`OwnedBroker::start_advertising`](crate::OwnedBroker::start_advertising) so that clients
//! come back through the proxy after the bootstrap.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The Kafka API key of `EndTxn`, the request that commits or aborts a transaction.
pub const END_TXN: i16 = 26;

/// A running proxy; dropping it stops accepting connections.
#[derive(Debug)]
pub struct KafkaProxy {
    port: u16,
    held: watch::Sender<Option<i16>>,
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
        let (held, watching) = watch::channel(None);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, watching.clone()));
            }
        });
        Self { port, held, accept }
    }

    /// The address clients dial (`127.0.0.1:<port>`).
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds back every request with API key `api_key` (and what follows it on its connection)
    /// from now on, until [`release`](Self::release).
    pub fn hold(&self, api_key: i16) {
        self.held.send_replace(Some(api_key));
    }

    /// Lets held requests through.
    pub fn release(&self) {
        self.held.send_replace(None);
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `client` to a new connection to `upstream` and back, request by request towards the
/// broker, waiting while a request's API key is held.
async fn forward(client: TcpStream, upstream: SocketAddr, mut held: watch::Receiver<Option<i16>>) {
    let Ok(broker) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
    });
    loop {
        let mut size = [0u8; 4];
        if client_read.read_exact(&mut size).await.is_err() {
            break;
        }
        let mut request = vec![0u8; u32::from_be_bytes(size) as usize];
        if client_read.read_exact(&mut request).await.is_err() {
            break;
        }
        let api_key = request
            .get(..2)
            .map_or(-1, |key| i16::from_be_bytes([key[0], key[1]]));
        if held.wait_for(|held| *held != Some(api_key)).await.is_err() {
            break;
        }
        if broker_write.write_all(&size).await.is_err()
            || broker_write.write_all(&request).await.is_err()
        {
            break;
        }
    }
    answers.abort();
}
