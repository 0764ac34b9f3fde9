//! The CP and AP write handlers (put, delete, compare-and-swap) of the public `Kv` service.

use super::*;

/// The write handlers; `Kv`'s methods wrap them to count every answer in the metrics.
impl KvService {
    pub(super) async fn put_inner(
        &self,
        req: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&req, Action::Write(&req.get_ref().keyspace))?;
        let _permit = self.node.admit_write().map_err(|e| self.status(e))?;
        let ctx = Ctx::of(&self.node, &req);
        let body = req.into_inner();
        let (keyspace, key, value, options, id) = (
            body.keyspace.clone(),
            body.key.clone(),
            body.value.clone(),
            body.options,
            body.request_id,
        );
        let send = |mut c: Client, r| async move { c.put(r).await };
        let result = self
            .write(&keyspace, &key, Some(value), &options, &id, ctx, body, send)
            .await
            .map(|w| {
                let leader = self.write_leader(&w);
                let answer = match w {
                    Routed::Here(version) => pb::PutResponse {
                        version: Some(version_pb(version)),
                        served_by: self.node.me.name.clone(),
                    },
                    Routed::Forwarded(answer, _) => answer,
                };
                with_leader(&self.node, answer, leader)
            });
        result.map_err(|e| self.status(e))
    }

    pub(super) async fn delete_inner(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize(&req, Action::Write(&req.get_ref().keyspace))?;
        let _permit = self.node.admit_write().map_err(|e| self.status(e))?;
        let ctx = Ctx::of(&self.node, &req);
        let body = req.into_inner();
        let (keyspace, key, options, id) = (
            body.keyspace.clone(),
            body.key.clone(),
            body.options,
            body.request_id,
        );
        let send = |mut c: Client, r| async move { c.delete(r).await };
        let result = self
            .write(&keyspace, &key, None, &options, &id, ctx, body, send)
            .await
            .map(|w| {
                let leader = self.write_leader(&w);
                let answer = match w {
                    Routed::Here(version) => pb::DeleteResponse {
                        version: Some(version_pb(version)),
                        served_by: self.node.me.name.clone(),
                    },
                    Routed::Forwarded(answer, _) => answer,
                };
                with_leader(&self.node, answer, leader)
            });
        result.map_err(|e| self.status(e))
    }

    pub(super) async fn cas_inner(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        authorize(&req, Action::Write(&req.get_ref().keyspace))?;
        let _permit = self.node.admit_write().map_err(|e| self.status(e))?;
        let ctx = Ctx::of(&self.node, &req);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            self.node.validate_value(&body.new_value)?;
            let ks = self.node.keyspace(&body.keyspace).await?;
            if ks.mode == Mode::Ap {
                return Err(NodeError::FailedPrecondition(format!(
                    "compare-and-swap is not supported on AP keyspace {:?}: last-write-wins replicas cannot make it atomic; use a CP keyspace",
                    ks.name
                )));
            }
            use pb::compare_and_swap_request::Expected as E;
            let expected = match &body.expected {
                Some(E::ExpectedVersion(v)) => CpExpected::Revision(*v),
                Some(E::ExpectedValue(v)) => CpExpected::Value(v.clone()),
                Some(E::ExpectAbsent(_)) => CpExpected::Absent,
                None => {
                    return Err(NodeError::InvalidArgument(
                        "compare-and-swap needs an expectation: expected_version, expected_value or expect_absent".into(),
                    ))
                }
            };
            let resend_safe = matches!(&body.request_id, Some(id) if id.client_id != 0);
            let req = at_most_once(
                &body.request_id,
                CpRequest::Cas {
                    keyspace: CP_GROUP_KEYSPACE,
                    key: cp_key(ks.id, &body.key),
                    expected,
                    new_value: body.new_value.clone(),
                },
            );
            let partition = self.node.ring.partition_for_key(&body.key);
            let me = self.node.me.name.clone();
            let send = |mut c: Client, r| async move { c.compare_and_swap(r).await };
            let me_id = Some(self.node.me.id);
            match self.route(&ks.name, partition, ctx, body, resend_safe, |cp| cp.execute(CP_GROUP_KEYSPACE, partition, req.clone(), ctx.deadline), send).await? {
                Routed::Here(CpResponse::Cas(CasOutcome::Swapped { revision })) => {
                    Ok((pb::CompareAndSwapResponse {
                        succeeded: true,
                        version: Some(version_pb(Version::Revision(revision))),
                        served_by: me,
                        ..Default::default()
                    }, me_id))
                }
                Routed::Here(CpResponse::Cas(CasOutcome::Mismatch { current })) => {
                    Ok((pb::CompareAndSwapResponse {
                        succeeded: false,
                        version: current
                            .as_ref()
                            .map(|(_, rev)| version_pb(Version::Revision(*rev))),
                        found: current.is_some(),
                        current_value: current.map(|(v, _)| v).unwrap_or_default(),
                        served_by: me,
                    }, me_id))
                }
                Routed::Here(other) => Err(NodeError::Internal(format!(
                    "the state machine answered {other:?} to a compare-and-swap"
                ))),
                Routed::Forwarded(answer, leader) => Ok((answer, leader)),
            }
        }
        .await;
        result
            .map(|(answer, leader)| with_leader(&self.node, answer, leader))
            .map_err(|e| self.status(e))
    }
}
