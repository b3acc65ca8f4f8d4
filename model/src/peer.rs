//! How a device of another installation is known on this installation's broker: the names both
//! sides agree on (the reconciler renders the users and permissions, the runtime publishes and
//! checks with them).

/// Exchange through which devices of *other* installations deliver to a device's inbound queue
/// (`aion-kanban.inbound`; direct, durable, bound with the queue's name as routing key; the
/// runtime declares it). A peer's broker user may write to this exchange only: not to the
/// default exchange, so it can reach no queue but the inbound one, and it reads nothing.
pub const PEER_EXCHANGE: &str = "aion-kanban.peers";
/// Broker users of other installations' devices are `peer.<device>`: the receiving runtime
/// knows the sender from the `user_id` property the broker checked against the login.
pub const PEER_USER_PREFIX: &str = "peer.";

/// The broker user a device of another installation logs in as: `peer.<device>`.
pub fn peer_user(device: &str) -> String {
    format!("{PEER_USER_PREFIX}{device}")
}

/// The device a peer user stands for (`peer.<device>` → `<device>`), `None` for other users.
pub fn peer_device(user: &str) -> Option<&str> {
    user.strip_prefix(PEER_USER_PREFIX)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_users_round_trip() {
        assert_eq!(peer_user("line-b.cam"), "peer.line-b.cam");
        assert_eq!(peer_device("peer.line-b.cam"), Some("line-b.cam"));
        assert_eq!(peer_device("peer."), None);
        assert_eq!(peer_device("aion"), None);
    }
}
