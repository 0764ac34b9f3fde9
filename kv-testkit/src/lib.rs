//! Fakes shared by unit, engine and simulation tests of kv, and the conformance suites every
//! implementation of a seam must pass.
//!
//! - `clock`: `ManualClock`, the clock seam moved by hand.
//! - `disk`: `SimDisk`, a disk that loses every unflushed write when its node crashes.
//! - `memnet`: `MemNet`, one in-memory network carrying the CP and AP transport seams, with
//!   partition / drop / delay / hang / refuse filters and per-kind counters (`MemNet::sent`);
//!   `memnet::ap_cluster::ApCluster`: AP engines on it, each on its own `SimDisk` and clock.
//! - `storage_suite`: the storage conformance suite (memory, sled, simulated disk).
//! - `net_suite` + `tcp_proxy`: the network conformance suite (TCP, turmoil).
//! - `sim`: the turmoil side of the network seam and simulated clusters of real nodes.
//!
//! **Architecture invariant:** nothing in `kv-server`'s library depends on this crate; it is a
//! dev-dependency of test targets and a dependency of `chaos` (whose scenario runner drives
//! simulated clusters). `kv-server`'s own unit tests cannot use it (a dev-dependency cycle
//! would give them a second copy of the server's types): engine tests that need it are
//! integration tests in `kv-server/tests/`.

pub mod clock;
pub mod disk;
pub mod memnet;
pub mod net_suite;
pub mod sim;
pub mod storage_suite;
pub mod tcp_proxy;
