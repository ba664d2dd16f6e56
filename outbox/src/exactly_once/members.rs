//! Which shards a relay takes: every relay over one outbox holds a member lease
//! (`outbox/<name>/members/<owner>`), and the live members share the shards out among
//! themselves, each the shards `s` with `s % members == its place` among the members by name.
//! So two relays split four shards 2/2, and a third joining or one leaving moves shards at the
//! next look (every third of the lease ttl); a shard a relay gives up is released after its
//! transaction in flight commits and is marked, and its new owner takes it at once.

use std::sync::Arc;

use leases::LeaseKeeper;
use leases::task::CancellationToken;
use tokio::sync::watch;

use super::shard::Shared;

/// The shards this relay may hold: its place among the live members, and their number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Assignment {
    place: u32,
    members: u32,
}

impl Assignment {
    /// Whether shard `shard` is this relay's to take (none while it is not a live member).
    pub(super) fn contains(self, shard: u32) -> bool {
        self.members > 0 && shard % self.members == self.place
    }

    /// The assignment of member `me` among the live members `names` (in any order); none when
    /// `me` is not among them.
    fn of(me: &str, names: &[String]) -> Self {
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names
            .iter()
            .position(|name| *name == me)
            .map_or_else(Self::default, |place| Self {
                place: u32::try_from(place).unwrap_or(u32::MAX),
                members: u32::try_from(names.len()).unwrap_or(u32::MAX),
            })
    }
}

/// The prefix of the member leases of `shared`'s relay.
pub(super) fn prefix(shared: &Shared) -> String {
    format!("outbox/{}/members/", shared.config.name)
}

/// Holds this relay's member lease and publishes its assignment until `stop`; then releases the
/// lease (so the other members take the shards over at their next look).
pub(super) async fn run(
    shared: Arc<Shared>,
    assignment: watch::Sender<Assignment>,
    stop: CancellationToken,
) {
    let config = &shared.config;
    let prefix = prefix(&shared);
    let me = format!("{prefix}{}", config.owner);
    let keeper = match LeaseKeeper::start(
        shared.named.clone(),
        shared.pool.clone(),
        me.clone(),
        shared.lease_owner.clone(),
        config.lease_ttl,
        config.lease_ttl / 3,
    ) {
        Ok(keeper) => keeper,
        Err(error) => {
            tracing::warn!(%error, "outbox: cannot keep the member lease");
            return;
        }
    };
    let mut held = keeper.subscribe();
    loop {
        if held.borrow().is_some() {
            match shared.named.holders(&shared.pool, &prefix).await {
                Ok(members) => {
                    let names: Vec<String> = members.into_iter().map(|m| m.name).collect();
                    let next = Assignment::of(&me, &names);
                    assignment.send_if_modified(|current| {
                        let changed = *current != next;
                        if changed {
                            tracing::info!(
                                members = next.members,
                                place = next.place,
                                "outbox: shards shared out again"
                            );
                            *current = next;
                        }
                        changed
                    });
                }
                // Keep the assignment: the shard leases fence whatever happens meanwhile.
                Err(error) => tracing::warn!(%error, "outbox: cannot read the relay's members"),
            }
        } else {
            assignment.send_replace(Assignment::default());
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = held.changed() => {}
            () = tokio::time::sleep(config.lease_ttl / 3) => {}
        }
    }
    keeper.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn shards(assignment: Assignment) -> Vec<u32> {
        (0..4).filter(|s| assignment.contains(*s)).collect()
    }

    #[test]
    fn the_live_members_share_the_shards_by_name() {
        let alone = Assignment::of("m/a", &names(&["m/a"]));
        assert_eq!(shards(alone), [0, 1, 2, 3]);
        let two = names(&["m/b", "m/a"]);
        assert_eq!(shards(Assignment::of("m/a", &two)), [0, 2]);
        assert_eq!(shards(Assignment::of("m/b", &two)), [1, 3]);
        let three = names(&["m/a", "m/b", "m/c"]);
        let each: Vec<Vec<u32>> = ["m/a", "m/b", "m/c"]
            .iter()
            .map(|me| shards(Assignment::of(me, &three)))
            .collect();
        assert_eq!(each, [vec![0, 3], vec![1], vec![2]]);
        assert!(
            shards(Assignment::of("m/z", &two)).is_empty(),
            "not a member"
        );
    }
}
