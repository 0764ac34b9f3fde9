//! `kv chaos`: the fault commands' flags and help texts.

use clap::Subcommand;

/// `kv chaos ...`.
#[derive(Subcommand, Debug)]
pub enum ChaosCmd {
    /// Kills a local node with SIGKILL (a crash: nothing flushed).
    #[command(after_help = "Example:\n  kv chaos kill n3 && kv chaos restart n3")]
    Kill {
        /// Node name (n1, n2, ...).
        node: String,
    },
    /// Starts a killed local node again with its data, and gives it back its network faults.
    #[command(after_help = "Example:\n  kv chaos restart n3")]
    Restart {
        /// Node name.
        node: String,
    },
    /// Freezes a local node with SIGSTOP: its connections stay open, it answers nothing.
    #[command(after_help = "Example:\n  kv chaos pause n2")]
    Pause {
        /// Node name.
        node: String,
    },
    /// Lets a paused local node run again (SIGCONT).
    #[command(after_help = "Example:\n  kv chaos resume n2")]
    Resume {
        /// Node name.
        node: String,
    },
    /// Cuts NODES off from the --from nodes: both ways, or only NODES' messages with --one-way.
    #[command(after_help = "Examples:\n  \
        kv chaos partition n3                          # from every other node\n  \
        kv chaos partition n1,n2 --from n3,n4          # two sides\n  \
        kv chaos partition n1 --from n2 --one-way      # n1's messages to n2 are dropped; n2 still reaches n1")]
    Partition {
        /// The nodes on one side (comma separated).
        #[arg(value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// The nodes on the other side (default: every other node).
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        /// Drop only the messages NODES send to the --from nodes.
        #[arg(long)]
        one_way: bool,
    },
    /// Delays every message FROM sends to TO (--delay-ms 0 removes the delay).
    #[command(after_help = "Example:\n  kv chaos slow n1 n2 --delay-ms 200")]
    Slow {
        /// The sending node.
        from: String,
        /// The receiving node.
        to: String,
        /// Added delay, in milliseconds.
        #[arg(long)]
        delay_ms: u32,
    },
    /// Moves a node's wall clock away from the real one (--ms 0 puts it back).
    #[command(after_help = "Example:\n  kv chaos skew n2 --ms -1500")]
    Skew {
        /// Node name.
        node: String,
        /// Offset in milliseconds (negative: behind).
        #[arg(long, allow_negative_numbers = true)]
        ms: i64,
    },
    /// Flips one byte inside stored records of a STOPPED local node's data (corruption that got
    /// past the storage engine: bad memory, a bug). The node detects each by its checksum on
    /// the next read or in its start-up scrub, and repairs it from the other replicas.
    #[command(after_help = "Examples:\n  \
        kv local stop n2 && kv chaos corrupt n2 --count 5 --seed 7 && kv local start n2\n  \
        kv chaos corrupt n2 -k ap --key user:1 --key user:2 -o json\n\n\
        Not undone by `kv chaos heal`: the node repairs it (read repair, anti-entropy, its\n\
        scrub; see docs/operations.md). A key whose every replica was flipped reads DATA_LOSS.")]
    Corrupt {
        /// Node name (its process must be stopped).
        node: String,
        /// Key whose record to flip (repeat for several), in the keyspace of -k/--keyspace.
        #[arg(long, conflicts_with = "count")]
        key: Vec<String>,
        /// Flip this many records chosen at random from every keyspace.
        #[arg(long, required_unless_present = "key")]
        count: Option<usize>,
        /// Seed of the random choice (records and bytes): the same seed picks the same ones.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Undoes every network fault (on every node) and resumes paused nodes.
    #[command(after_help = "Example:\n  kv chaos heal")]
    Heal,
    /// Shows the faults in place and, for a local cluster, which nodes run, are paused or down.
    #[command(after_help = "Example:\n  kv chaos status -o json")]
    Status,
}
