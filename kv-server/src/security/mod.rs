//! Who may reach and use a node: tokens and roles (`auth`), the gate every request passes
//! (`gate`), and TLS on both listeners (`tls`). docs/security.md states the threat model.

pub mod auth;
pub mod gate;
pub mod tls;

pub use auth::{Action, AuthTable, Principal};
pub use gate::{authorize, check_sender, Api, Caller, GatePolicy};
pub use tls::{NodeTls, TlsFiles};

use std::sync::Arc;

/// A node's security settings: both `None` is the plaintext, open default.
#[derive(Clone, Default)]
pub struct Security {
    /// Tokens and roles (`--auth-file`).
    pub auth: Option<Arc<AuthTable>>,
    /// TLS material (`--tls-cert/--tls-key/--tls-ca`).
    pub tls: Option<NodeTls>,
}
