//! Fakes shared by unit, engine and simulation tests of kv.
//!
//! - `sim`: the turmoil side of the network seam and simulated clusters of real nodes.
//!
//! **Architecture invariant:** nothing in `kv-server`'s library depends on this crate; it is a
//! dev-dependency of test targets and a dependency of `chaos` (whose scenario runner drives
//! simulated clusters).

pub mod sim;
