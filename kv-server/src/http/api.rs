//! The HTTP/JSON API: get, put, delete and compare-and-swap as `POST /v1/kv/<op>` with a JSON
//! body shaped like the gRPC request (proto3 JSON: lowerCamelCase names, `bytes` as base64,
//! 64-bit integers as strings), answered by the same `KvService` handlers as gRPC. Errors are
//! `{"code", "message", "details"}` with the HTTP status grpc-gateway gives the gRPC code.

use crate::metrics::code_name;
use crate::node::Node;
use crate::security::{Caller, GatePolicy};
use crate::service::KvService;
use axum::body::{to_bytes, Body};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use kv_proto::v1 as pb;
use kv_proto::v1::kv_server::Kv;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;
use tonic::Code;

/// Bytes a request body may hold beyond what its base64 values need (names, options, JSON).
pub const MAX_HTTP_BODY_SLACK_BYTES: usize = 64 * 1024;

/// The HTTP status grpc-gateway answers for a gRPC status code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 Client Closed Request (nginx's), as grpc-gateway uses.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body grpc-gateway sends, with the code's name added for people reading it.
pub(super) fn error_response(code: Code, message: &str) -> Response {
    let body = json!({
        "code": code as i32,
        "status": code_name(code),
        "message": message,
        "details": [],
    });
    (
        http_status(code),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A request refused before it reached the service: always `INVALID_ARGUMENT`.
fn bad_request(message: String) -> Response {
    error_response(Code::InvalidArgument, &message)
}

/// Base64 bytes: standard or URL-safe alphabet, padded (as grpc-gateway accepts).
#[derive(Debug, Default, Clone)]
struct B64(Vec<u8>);

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(&s)
            .or_else(|_| URL_SAFE.decode(&s))
            .map(B64)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "not base64 ({e}): keys and values are base64-encoded bytes, e.g. \"aGVsbG8=\" for hello"
                ))
            })
    }
}

/// A uint64 given as a JSON string (proto3 JSON) or a number.
#[derive(Debug, Default, Clone, Copy)]
struct U64(u64);

impl<'de> Deserialize<'de> for U64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(U64(n)),
            Either::S(s) => s.parse().map(U64).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{:?} is not an unsigned 64-bit integer",
                    crate::error::truncate(&s, 40)
                ))
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    #[serde(default)]
    consistency: Option<String>,
    #[serde(default, alias = "read_replicas")]
    read_replicas: u32,
    #[serde(default, alias = "write_replicas")]
    write_replicas: u32,
    #[serde(default)]
    stale: bool,
}

impl Options {
    fn to_pb(&self) -> Result<pb::RequestOptions, String> {
        let consistency = match self.consistency.as_deref() {
            None => pb::Consistency::Default,
            Some(name) => pb::Consistency::from_str_name(name)
                .or_else(|| {
                    pb::Consistency::from_str_name(&format!(
                        "CONSISTENCY_{}",
                        name.to_ascii_uppercase()
                    ))
                })
                .ok_or_else(|| {
                    format!(
                        "unknown consistency {:?}: expected ONE, QUORUM, ALL or DEFAULT",
                        crate::error::truncate(name, 40)
                    )
                })?,
        };
        Ok(pb::RequestOptions {
            consistency: consistency as i32,
            read_replicas: self.read_replicas,
            write_replicas: self.write_replicas,
            stale: self.stale,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestIdJson {
    #[serde(alias = "client_id")]
    client_id: U64,
    seq: U64,
}

fn options_pb(o: &Option<Options>) -> Result<Option<pb::RequestOptions>, String> {
    o.as_ref().map(|o| o.to_pb()).transpose()
}

fn request_id_pb(id: &Option<RequestIdJson>) -> Option<pb::RequestId> {
    id.as_ref().map(|id| pb::RequestId {
        client_id: id.client_id.0,
        seq: id.seq.0,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GetJson {
    keyspace: String,
    key: B64,
    #[serde(default)]
    options: Option<Options>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PutJson {
    keyspace: String,
    key: B64,
    value: B64,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default, alias = "request_id")]
    request_id: Option<RequestIdJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeleteJson {
    keyspace: String,
    key: B64,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default, alias = "request_id")]
    request_id: Option<RequestIdJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CasJson {
    keyspace: String,
    key: B64,
    #[serde(default, alias = "expected_version")]
    expected_version: Option<U64>,
    #[serde(default, alias = "expected_value")]
    expected_value: Option<B64>,
    #[serde(default, alias = "expect_absent")]
    expect_absent: Option<bool>,
    #[serde(alias = "new_value")]
    new_value: B64,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default, alias = "request_id")]
    request_id: Option<RequestIdJson>,
}

/// Reads and parses a JSON body no larger than the node's limit for `values` values; the error
/// is the message of an `INVALID_ARGUMENT` answer.
async fn read_json<T: DeserializeOwned>(
    node: &Node,
    body: Body,
    values: usize,
) -> Result<T, String> {
    let limit = node.config.max_value_bytes.div_ceil(3) * 4 * values + MAX_HTTP_BODY_SLACK_BYTES;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        format!(
            "the request body is over this endpoint's limit of {limit} bytes: values are at most {} bytes before base64 (--max-value-bytes)",
            node.config.max_value_bytes
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the request body is not the JSON this endpoint takes: {} (see docs/http-api.md)",
            crate::error::truncate(&e.to_string(), 300)
        )
    })
}

/// Who sent an HTTP API request, checked by the same gate as the gRPC client port (a token in
/// `Authorization: Bearer TOKEN` when the node runs with `--auth-file`), or the refusal. The
/// handlers then check the keyspace grant as they do for gRPC.
#[allow(clippy::result_large_err)]
fn admit(gate: &GatePolicy, method: &str, headers: &HeaderMap) -> Result<Caller, Response> {
    gate.admit(&format!("/kv.v1.Kv/{method}"), headers, None)
        .map_err(|status| error_response(status.code(), status.message()))
}

/// A tonic request carrying the HTTP request's `grpc-timeout` header (grpc-gateway passes
/// `Grpc-Timeout` the same way), so the deadline rules are the gRPC ones.
fn grpc_request<T>(headers: &HeaderMap, body: T, caller: Caller) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.extensions_mut().insert(caller);
    if let Some(v) = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        req.metadata_mut().insert("grpc-timeout", v);
    }
    req
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn version_json(v: &Option<pb::Version>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => match &v.hlc {
            Some(h) => json!({
                "revision": v.revision.to_string(),
                "hlc": {
                    "physicalMs": h.physical_ms.to_string(),
                    "logical": h.logical,
                    "nodeId": h.node_id.to_string(),
                },
            }),
            None => json!({ "revision": v.revision.to_string() }),
        },
    }
}

fn answer<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    to_json: impl Fn(T) -> Value,
) -> Response {
    match r {
        Ok(resp) => ok_json(to_json(resp.into_inner())),
        Err(status) => error_response(status.code(), status.message()),
    }
}

pub(super) async fn get(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<GatePolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match admit(&gate, "Get", &headers) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let req: GetJson = match read_json(&node, body, 0).await {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    let options = match options_pb(&req.options) {
        Ok(o) => o,
        Err(msg) => return bad_request(msg),
    };
    let pb_req = pb::GetRequest {
        keyspace: req.keyspace,
        key: req.key.0,
        options,
    };
    let r = KvService::new(node)
        .get(grpc_request(&headers, pb_req, caller))
        .await;
    answer(r, |g| {
        json!({
            "found": g.found,
            "value": b64(&g.value),
            "version": version_json(&g.version),
            "servedBy": g.served_by,
            "maybeStale": g.maybe_stale,
        })
    })
}

pub(super) async fn put(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<GatePolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match admit(&gate, "Put", &headers) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let req: PutJson = match read_json(&node, body, 1).await {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    let options = match options_pb(&req.options) {
        Ok(o) => o,
        Err(msg) => return bad_request(msg),
    };
    let pb_req = pb::PutRequest {
        keyspace: req.keyspace,
        key: req.key.0,
        value: req.value.0,
        options,
        request_id: request_id_pb(&req.request_id),
    };
    let r = KvService::new(node)
        .put(grpc_request(&headers, pb_req, caller))
        .await;
    answer(
        r,
        |p| json!({ "version": version_json(&p.version), "servedBy": p.served_by }),
    )
}

pub(super) async fn delete(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<GatePolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match admit(&gate, "Delete", &headers) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let req: DeleteJson = match read_json(&node, body, 0).await {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    let options = match options_pb(&req.options) {
        Ok(o) => o,
        Err(msg) => return bad_request(msg),
    };
    let pb_req = pb::DeleteRequest {
        keyspace: req.keyspace,
        key: req.key.0,
        options,
        request_id: request_id_pb(&req.request_id),
    };
    let r = KvService::new(node)
        .delete(grpc_request(&headers, pb_req, caller))
        .await;
    answer(
        r,
        |d| json!({ "version": version_json(&d.version), "servedBy": d.served_by }),
    )
}

pub(super) async fn cas(
    State(node): State<Arc<Node>>,
    Extension(gate): Extension<Arc<GatePolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match admit(&gate, "CompareAndSwap", &headers) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let req: CasJson = match read_json(&node, body, 2).await {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    use pb::compare_and_swap_request::Expected as E;
    let expected = match (&req.expected_version, &req.expected_value, req.expect_absent) {
        (Some(v), None, None | Some(false)) => E::ExpectedVersion(v.0),
        (None, Some(v), None | Some(false)) => E::ExpectedValue(v.0.clone()),
        (None, None, Some(true)) => E::ExpectAbsent(true),
        _ => {
            return bad_request(
                "compare-and-swap needs exactly one expectation: expectedVersion, expectedValue or expectAbsent: true".into(),
            )
        }
    };
    let options = match options_pb(&req.options) {
        Ok(o) => o,
        Err(msg) => return bad_request(msg),
    };
    let pb_req = pb::CompareAndSwapRequest {
        keyspace: req.keyspace,
        key: req.key.0,
        expected: Some(expected),
        new_value: req.new_value.0,
        options,
        request_id: request_id_pb(&req.request_id),
    };
    let r = KvService::new(node)
        .compare_and_swap(grpc_request(&headers, pb_req, caller))
        .await;
    answer(r, |c| {
        json!({
            "succeeded": c.succeeded,
            "version": version_json(&c.version),
            "found": c.found,
            "currentValue": b64(&c.current_value),
            "servedBy": c.served_by,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_grpc_gateway_maps_them() {
        assert_eq!(http_status(Code::Ok), StatusCode::OK);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn bodies_decode_base64_both_alphabets_and_refuse_the_rest() {
        let r: PutJson =
            serde_json::from_str(r#"{"keyspace":"cp","key":"/w==","value":"_w=="}"#).unwrap();
        assert_eq!((r.key.0, r.value.0), (vec![0xff], vec![0xff]));
        let e = serde_json::from_str::<PutJson>(r#"{"keyspace":"cp","key":"%%","value":""}"#)
            .unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e =
            serde_json::from_str::<PutJson>(r#"{"keyspace":"cp","key":"","valu":""}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let c: CasJson = serde_json::from_str(
            r#"{"keyspace":"cp","key":"aw==","expectedVersion":"42","newValue":""}"#,
        )
        .unwrap();
        assert_eq!(c.expected_version.map(|v| v.0), Some(42));
    }
}
