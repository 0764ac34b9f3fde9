//! `MemNet`: one in-memory network that carries both engines' transport seams — the CP
//! `RaftTransport` and the AP `ApTransport` — between in-process nodes, with TiKV-style filters
//! (partition node sets, drop one way, delay, hang, refuse) instead of fault flags in engines.
//!
//! Every message travels two legs: the request (from → to) and the answer (to → from). Each
//! filter matches a direction, a set of senders and receivers and a kind of message, and is
//! checked when a leg is sent: a request dropped is never delivered (nothing applied), an
//! answer dropped means the receiver applied the request but the caller never hears it.
//! A node always reaches itself: filters never match a message from a node to itself.
//!
//! Nodes register their engines (`add_cp`, `add_ap`); `remove` takes a node off the network (a
//! killed process), `set_down` keeps its engines but makes it unreachable (AP tests that kill and
//! revive over the same engine). `liveness` gives a perfect failure detector: alive iff
//! registered, up, not cut off by a drop filter, and not explicitly suspected.
//!
//! Counters: `sent` counts every request a node sent (whatever became of it), `delivered` only
//! those whose answer came back, `merkle_range_records` the records successful Merkle range
//! answers carried. `ap_cluster` builds whole AP clusters on this network.
//!
//! Invariant: nothing here sleeps except a delay filter (on `tokio::time`, so paused time and
//! turmoil drive it); a message is dropped, delayed, hung or delivered, never duplicated.

pub mod ap_cluster;
mod filter;
mod seams;

pub use ap_cluster::ApCluster;
pub use filter::{Failure, Fault, Filter, FilterId, Kinds, Legs, MessageKind, Nodes};
pub use seams::ApService;

use futures::future::BoxFuture;
use kv_server::ap::{ApTransport, Liveness};
use kv_server::cp::network::RaftTransport;
use kv_server::cp::CpEngine;
use kv_server::types::NodeId;
use seams::{MemApTransport, MemRaftTransport, NetLiveness};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// What one node serves on the network.
#[derive(Clone, Default)]
struct Endpoints {
    /// Held weakly: dropping the engine takes the node off the network, as a killed process.
    cp: Option<Weak<CpEngine>>,
    ap: Option<Arc<dyn ApService>>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeId, Endpoints>,
    down: BTreeSet<NodeId>,
    suspected: BTreeSet<NodeId>,
    filters: BTreeMap<FilterId, Filter>,
    next_filter: u64,
    sent: BTreeMap<MessageKind, u64>,
    delivered: BTreeMap<MessageKind, u64>,
    merkle_range_records: u64,
}

impl State {
    /// The fault a leg suffers: the first matching drop, hang or refuse, else the summed delay.
    fn fault(&self, from: NodeId, to: NodeId, kind: MessageKind, request: bool) -> Option<Fault> {
        let mut delay = Duration::ZERO;
        let matching = self.filters.values();
        for f in matching.filter(|f| f.matches(from, to, kind, request)) {
            match &f.fault {
                Fault::Delay(d) => delay += *d,
                other => return Some(other.clone()),
            }
        }
        (!delay.is_zero()).then_some(Fault::Delay(delay))
    }
}

/// The in-memory network; share it as `Arc<MemNet>`.
#[derive(Default)]
pub struct MemNet {
    state: Mutex<State>,
}

/// What a leg's fault means for the message.
enum Leg {
    Pass,
    Fail(Failure),
    Hang,
}

impl MemNet {
    /// An empty network.
    pub fn new() -> Arc<MemNet> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- nodes ----

    /// Puts `engine` on the network as node `id`'s CP side (held weakly).
    pub fn add_cp(&self, id: NodeId, engine: &Arc<CpEngine>) {
        self.lock().nodes.entry(id).or_default().cp = Some(Arc::downgrade(engine));
    }

    /// Puts `service` on the network as node `id`'s AP side.
    pub fn add_ap(&self, id: NodeId, service: Arc<dyn ApService>) {
        self.lock().nodes.entry(id).or_default().ap = Some(service);
    }

    /// Takes node `id` and its engines off the network (a killed process).
    pub fn remove(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Makes node `id` unreachable (`true`) or reachable again, keeping its engines.
    pub fn set_down(&self, id: NodeId, down: bool) {
        let mut s = self.lock();
        if down {
            s.down.insert(id);
        } else {
            s.down.remove(&id);
        }
    }

    /// Makes every node's liveness view report `id` as down (`true`) although it answers.
    pub fn suspect(&self, id: NodeId, suspected: bool) {
        let mut s = self.lock();
        if suspected {
            s.suspected.insert(id);
        } else {
            s.suspected.remove(&id);
        }
    }

    // ---- filters ----

    /// Installs a filter.
    pub fn add_filter(&self, filter: Filter) -> FilterId {
        let mut s = self.lock();
        let id = FilterId(s.next_filter);
        s.next_filter += 1;
        s.filters.insert(id, filter);
        id
    }

    /// Removes one filter (a no-op if it is gone already).
    pub fn remove_filter(&self, id: FilterId) {
        self.lock().filters.remove(&id);
    }

    /// Removes every filter: partitions, drops, delays, hangs and refusals.
    pub fn heal(&self) {
        self.lock().filters.clear();
    }

    /// Drops every message between the two sides, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.add_filter(Filter::between(Nodes::of(a), Nodes::of(b), Fault::Drop));
        self.add_filter(Filter::between(Nodes::of(b), Nodes::of(a), Fault::Drop));
    }

    /// Drops every message between `id` and every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.add_filter(Filter::between(Nodes::of(&[id]), Nodes::All, Fault::Drop));
        self.add_filter(Filter::between(Nodes::All, Nodes::of(&[id]), Fault::Drop));
    }

    /// Drops messages travelling from `from` to `to` only: `from`'s requests to `to`, and
    /// `from`'s answers to `to`'s requests.
    pub fn drop_one_way(&self, from: NodeId, to: NodeId) -> FilterId {
        self.add_filter(Filter::between(
            Nodes::of(&[from]),
            Nodes::of(&[to]),
            Fault::Drop,
        ))
    }

    /// Delays every message leg from `from` to `to` by `by`.
    pub fn delay(&self, from: NodeId, to: NodeId, by: Duration) -> FilterId {
        self.add_filter(Filter::between(
            Nodes::of(&[from]),
            Nodes::of(&[to]),
            Fault::Delay(by),
        ))
    }

    /// Makes every answer `id` sends vanish (the requests are carried out): callers time out.
    pub fn hang(&self, id: NodeId) -> FilterId {
        self.add_filter(Filter {
            legs: Legs::Answers,
            ..Filter::between(Nodes::of(&[id]), Nodes::All, Fault::Hang)
        })
    }

    /// Makes `id` refuse every request of `kinds` with an error, without acting on it.
    pub fn refuse(&self, id: NodeId, kinds: Kinds) -> FilterId {
        let why = format!("node {id} refused the message (test filter)");
        self.add_filter(Filter {
            kinds,
            legs: Legs::Requests,
            ..Filter::between(Nodes::All, Nodes::of(&[id]), Fault::Refuse(why))
        })
    }

    // ---- views ----

    /// Whether `from` can reach `to` now: `to` is on the network, up, and no drop filter
    /// cuts every kind of message from `from` to it. Delays, hangs and refusals do not count.
    pub fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        let s = self.lock();
        from == to
            || (s.nodes.contains_key(&to)
                && !s.down.contains(&to)
                && !s.filters.values().any(|f| {
                    f.fault == Fault::Drop
                        && f.kinds == Kinds::Any
                        && f.legs != Legs::Answers
                        && f.from.contains(from)
                        && f.to.contains(to)
                }))
    }

    /// Requests of `kind` sent so far, whether they were delivered, dropped, hung or refused.
    pub fn sent(&self, kind: MessageKind) -> u64 {
        self.lock().sent.get(&kind).copied().unwrap_or(0)
    }

    /// Messages of `kind` delivered and answered successfully so far.
    pub fn delivered(&self, kind: MessageKind) -> u64 {
        self.lock().delivered.get(&kind).copied().unwrap_or(0)
    }

    /// Records carried by successful Merkle range answers so far.
    pub fn merkle_range_records(&self) -> u64 {
        self.lock().merkle_range_records
    }

    /// Node `from`'s Raft transport.
    pub fn raft_transport(self: &Arc<Self>, from: NodeId) -> Arc<dyn RaftTransport> {
        Arc::new(MemRaftTransport {
            from,
            net: self.clone(),
        })
    }

    /// Node `from`'s AP transport.
    pub fn ap_transport(self: &Arc<Self>, from: NodeId) -> Arc<dyn ApTransport> {
        Arc::new(MemApTransport {
            from,
            net: self.clone(),
        })
    }

    /// Node `from`'s failure detector: a perfect one over this network.
    pub fn liveness(self: &Arc<Self>, from: NodeId) -> Arc<dyn Liveness> {
        Arc::new(NetLiveness {
            from,
            net: self.clone(),
        })
    }

    // ---- delivery ----

    async fn leg(&self, from: NodeId, to: NodeId, kind: MessageKind, request: bool) -> Leg {
        let fault = self.lock().fault(from, to, kind, request);
        match fault {
            None => Leg::Pass,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Leg::Pass
            }
            Some(Fault::Hang) => Leg::Hang,
            Some(Fault::Drop) if request => Leg::Fail(Failure::Dropped),
            Some(Fault::Drop) => Leg::Fail(Failure::AnswerLost),
            Some(Fault::Refuse(why)) => Leg::Fail(Failure::Refused(why)),
        }
    }

    /// Carries one message from `from` to `to` and its answer back. `serve` runs at the
    /// receiver with its endpoints; `None` means the receiver does not serve this kind.
    async fn carry<T: Send + 'static>(
        &self,
        from: NodeId,
        to: NodeId,
        kind: MessageKind,
        serve: impl FnOnce(Endpoints) -> Option<BoxFuture<'static, Result<T, String>>>,
    ) -> Result<T, Failure> {
        *self.lock().sent.entry(kind).or_default() += 1;
        match self.leg(from, to, kind, true).await {
            Leg::Pass => {}
            Leg::Fail(f) => return Err(f),
            Leg::Hang => futures::future::pending().await,
        }
        let endpoints = {
            let s = self.lock();
            if s.down.contains(&to) {
                None
            } else {
                s.nodes.get(&to).cloned()
            }
        };
        let work = endpoints.and_then(serve).ok_or(Failure::Down)?;
        let answer = work.await.map_err(Failure::Refused)?;
        match self.leg(to, from, kind, false).await {
            Leg::Pass => {}
            Leg::Fail(f) => return Err(f),
            Leg::Hang => futures::future::pending().await,
        }
        *self.lock().delivered.entry(kind).or_default() += 1;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
