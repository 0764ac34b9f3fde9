//! Value enums shared by the command definitions (`cli`) and the commands that take them
//! (`bench`), so neither imports the other.

use clap::ValueEnum;

/// AP consistency level.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConsistencyArg {
    /// One replica.
    One,
    /// A majority of replicas.
    Quorum,
    /// Every replica.
    All,
}

/// Routing policy of the client.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoutingArg {
    /// To the key's owner (or its partition's known leader).
    TokenAware,
    /// To each node in turn.
    RoundRobin,
    /// To the node with the fewest requests in flight.
    LeastOutstanding,
}

/// Format of `kv server`'s log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL node=NAME span{fields}: target: message fields`.
    Text,
    /// One JSON object per line: timestamp, level, node, target, message, fields, span fields.
    Json,
}
