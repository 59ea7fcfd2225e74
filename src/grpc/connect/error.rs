//! Connect errors: the code names, their HTTP statuses, and the JSON body built from a gRPC
//! status (code, message and the `google.rpc` details in `grpc-status-details-bin`).

use base64::Engine as _;
use prost::Message as _;

use super::transcode::Transcoder;

/// A Connect error: a code of the Connect spec's table and a message. Details come from the
/// gRPC status this error was read from, already in their Connect form.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// The gRPC code.
    pub code: tonic::Code,
    /// Human text for the caller (never a secret: our messages are built to be shown).
    pub message: String,
    /// `details` entries of the JSON body.
    pub details: Vec<serde_json::Value>,
}

impl ConnectError {
    /// An error without details.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new() }
    }

    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(tonic::Code::InvalidArgument, message)
    }

    /// The error carried by a gRPC status, its `google.rpc` details decoded with `pool`.
    pub fn from_status(status: &tonic::Status, pool: &Transcoder) -> Self {
        let mut e = Self::new(status.code(), status.message());
        if !status.details().is_empty()
            && let Ok(rpc) = tonic_types::pb::Status::decode(status.details())
        {
            e.details = rpc.details.iter().map(|any| detail(any, pool)).collect();
        }
        e
    }

    /// The Connect code name (`invalid_argument`...).
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }

    /// The HTTP status of a unary answer with this error (the Connect spec's table).
    pub fn http_status(&self) -> http::StatusCode {
        http_status(self.code)
    }

    /// The JSON body: `{"code", "message", "details"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "code": self.code_name() });
        if !self.message.is_empty() {
            body["message"] = self.message.clone().into();
        }
        if !self.details.is_empty() {
            body["details"] = self.details.clone().into();
        }
        body
    }
}

/// One `details` entry: the type's full name, the encoded message (base64 without padding, as
/// the spec writes it) and, when the type is known, its JSON form under `debug`.
fn detail(any: &prost_types::Any, pool: &Transcoder) -> serde_json::Value {
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let mut d = serde_json::json!({
        "type": name,
        "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
    });
    if let Some(debug) = pool.message_json(name, &any.value) {
        d["debug"] = debug;
    }
    d
}

/// The Connect name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "canceled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a Connect unary error, per the spec's table.
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as S;
    use tonic::Code as C;
    match code {
        C::Ok => S::OK,
        // 499: "Client Closed Request", the spec's status for `canceled`.
        C::Cancelled => S::from_u16(499).unwrap_or(S::REQUEST_TIMEOUT),
        C::Unknown | C::Internal | C::DataLoss => S::INTERNAL_SERVER_ERROR,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => S::BAD_REQUEST,
        C::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        C::NotFound => S::NOT_FOUND,
        C::AlreadyExists | C::Aborted => S::CONFLICT,
        C::PermissionDenied => S::FORBIDDEN,
        C::ResourceExhausted => S::TOO_MANY_REQUESTS,
        C::Unimplemented => S::NOT_IMPLEMENTED,
        C::Unavailable => S::SERVICE_UNAVAILABLE,
        C::Unauthenticated => S::UNAUTHORIZED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_spec_status() {
        let table = [
            (tonic::Code::Cancelled, 499),
            (tonic::Code::Unknown, 500),
            (tonic::Code::InvalidArgument, 400),
            (tonic::Code::DeadlineExceeded, 504),
            (tonic::Code::NotFound, 404),
            (tonic::Code::AlreadyExists, 409),
            (tonic::Code::PermissionDenied, 403),
            (tonic::Code::ResourceExhausted, 429),
            (tonic::Code::FailedPrecondition, 400),
            (tonic::Code::Aborted, 409),
            (tonic::Code::OutOfRange, 400),
            (tonic::Code::Unimplemented, 501),
            (tonic::Code::Internal, 500),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::DataLoss, 500),
            (tonic::Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(code_name(tonic::Code::Cancelled), "canceled");
    }

    #[test]
    fn status_details_become_typed_json() {
        use tonic_types::{ErrorDetails, StatusExt};
        let pool = Transcoder::new().unwrap();
        let mut d = ErrorDetails::new();
        d.add_bad_request_violation("name", "must start with onboardings/");
        d.set_retry_info(Some(std::time::Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(tonic::Code::InvalidArgument, "bad name", d);
        let e = ConnectError::from_status(&status, &pool);
        let body = e.to_json();
        assert_eq!(body["code"], "invalid_argument");
        assert_eq!(body["message"], "bad name");
        let details = body["details"].as_array().unwrap();
        let bad = details.iter().find(|d| d["type"] == "google.rpc.BadRequest").unwrap();
        assert_eq!(bad["debug"]["fieldViolations"][0]["field"], "name");
        assert!(!bad["value"].as_str().unwrap().ends_with('='), "unpadded base64");
        let retry = details.iter().find(|d| d["type"] == "google.rpc.RetryInfo").unwrap();
        assert_eq!(retry["debug"]["retryDelay"], "1.500s");
    }
}
