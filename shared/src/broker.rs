//! Connecting to RabbitMQ with failover between the nodes of one cluster; every AMQP connection
//! of both binaries and of the operator commands is opened here.
//!
//! `AMQP_URL` is one URL or a comma-separated list of the nodes of one cluster (same credentials
//! and vhost). Each holder of a connection has its own [`Nodes`]: the first connection goes to a
//! random node of the list, so that processes spread over the cluster, and every later one (after
//! the connection failed) starts at the node after the one it was on, so that a dead node is left
//! at once. One [`Nodes::connect`] tries each node once, in that order; the caller pauses (backs
//! off) before trying the whole list again. The node a connection lands on is logged as
//! `host:port` (never with the credentials).

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{uri::AMQPUri, Connection, ConnectionProperties};

/// The longest one connection attempt to one node may take (a node that does not answer at all
/// must not hold up the move to the next one).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One broker node of the list.
#[derive(Clone)]
pub struct Node {
    /// The node's URL; it holds the password: never log it.
    url: String,
    /// `host:port`, safe to log.
    label: String,
}

impl Node {
    /// `host:port` of the node (no credentials).
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Splits and checks an `AMQP_URL` value: every item must be an `amqp://` or `amqps://` URL.
/// The error says which item (by position, never its text, which may hold a password) is wrong.
pub fn parse_nodes(list: &str) -> Result<Vec<Node>, String> {
    let items: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("must name at least one node".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let which = if items.len() == 1 {
                String::new()
            } else {
                format!(" (item {} of the list)", i + 1)
            };
            if !(item.starts_with("amqp://") || item.starts_with("amqps://")) {
                return Err(format!("must start with amqp:// or amqps://{which}"));
            }
            let uri = AMQPUri::from_str(item).map_err(|_| format!("is not a valid AMQP URL{which}"))?;
            Ok(Node {
                url: item.to_string(),
                label: format!("{}:{}", uri.authority.host, uri.authority.port),
            })
        })
        .collect()
}

/// Why no node of the list took the connection. Holds node labels and lapin's errors, never a URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no RabbitMQ node reachable ({0})")]
pub struct ConnectError(String);

/// The node list of one connection holder, and where its next connection attempt starts.
#[derive(Clone)]
pub struct Nodes {
    nodes: Arc<[Node]>,
    next: Arc<AtomicUsize>,
}

impl Nodes {
    /// The nodes of an already checked `AMQP_URL` (see [`parse_nodes`]); starts at a random one.
    pub fn new(url: &str) -> Self {
        let nodes: Arc<[Node]> = parse_nodes(url)
            .expect("AMQP_URL is checked when the configuration is read")
            .into();
        let start = rand::random::<u32>() as usize % nodes.len();
        Self {
            nodes,
            next: Arc::new(AtomicUsize::new(start)),
        }
    }

    /// How many nodes the list names.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Opens a connection named `connection_name`, trying each node once from where the last
    /// connection left off. Returns the connection and the `host:port` of its node.
    pub async fn connect(&self, connection_name: &str) -> Result<(Connection, String), ConnectError> {
        let start = self.next.load(Ordering::SeqCst);
        let mut failures = Vec::new();
        for step in 0..self.nodes.len() {
            let i = (start + step) % self.nodes.len();
            let node = &self.nodes[i];
            let props = ConnectionProperties::default().with_connection_name(connection_name.into());
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&node.url, props)).await {
                Ok(Ok(conn)) => {
                    // The next connection (needed only when this one fails) starts elsewhere.
                    self.next.store((i + 1) % self.nodes.len(), Ordering::SeqCst);
                    tracing::info!(node = %node.label, connection = connection_name, "connected to RabbitMQ node");
                    return Ok((conn, node.label.clone()));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
            if self.nodes.len() > 1 {
                tracing::warn!(node = %node.label, connection = connection_name, %error, "RabbitMQ node unreachable; trying the next one");
            }
            failures.push(format!("{}: {error}", node.label));
        }
        // The next attempt starts one node further, so a list is never retried from one place.
        self.next.store((start + 1) % self.nodes.len(), Ordering::SeqCst);
        Err(ConnectError(failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_and_labelled_without_credentials() {
        let nodes =
            parse_nodes("amqp://u:secret@a:5672/%2f, amqp://u:secret@b:5673/%2f,,amqps://u:secret@c/v").unwrap();
        let labels: Vec<&str> = nodes.iter().map(Node::label).collect();
        assert_eq!(labels, ["a:5672", "b:5673", "c:5671"]);
    }

    #[test]
    fn a_bad_item_is_named_by_position_not_by_its_text() {
        let e = parse_nodes("amqp://u:secret@a/%2f,http://u:secret@b/").err().unwrap();
        assert!(e.contains("item 2"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert!(parse_nodes(" , ").is_err());
        assert!(parse_nodes("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
    }

    #[tokio::test]
    async fn connecting_moves_past_a_dead_node_and_says_which_ones_failed() {
        // Two ports nothing listens on: both are tried, named in the error, and the next attempt
        // starts one node further.
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let list = format!(
            "amqp://g:g@127.0.0.1:{}/%2f,amqp://g:g@127.0.0.1:{}/%2f",
            ports[0], ports[1]
        );
        let nodes = Nodes::new(&list);
        let before = nodes.next.load(Ordering::SeqCst);
        let e = nodes.connect("test").await.err().unwrap().to_string();
        for p in &ports {
            assert!(e.contains(&format!("127.0.0.1:{p}")), "{e}");
        }
        assert!(!e.contains("g:g"), "{e}");
        assert_eq!(nodes.next.load(Ordering::SeqCst), (before + 1) % 2);
    }
}
