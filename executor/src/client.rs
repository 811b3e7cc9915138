//! The scheduler, as an executor speaks to it: one typed method per
//! endpoint of the dispatch API (`/v1/executors/...`, `/v1/migrations/...`,
//! `/v1/recoveries/...`), each answering its API type or a [`ClientError`].
//! A refusal carries the HTTP status and the [`ErrorCode`] of the
//! scheduler's error body, so that callers decide by code, never by the
//! wording of a message.

use std::time::Duration;

use heliotrope_api_spec::{
    Assignment, Completion, ErrorBody, ErrorCode, Executor, ExecutorRegistration, Heartbeat, MigrationDetail,
    NetworkReport, ProgressAnswer, ProgressReport, RecoveryReport, ReplicationPlan, ReplicationReport, RestartOutcome,
    VmRecovery,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a request to the scheduler did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler answered with an error status. `code` is its error
    /// body's code (none if the body was not the API's error shape, as from
    /// a proxy in between); `message` its message (else the body's text).
    #[error("{request}: {status}: {message}")]
    Refused { request: String, status: StatusCode, code: Option<ErrorCode>, message: String },
    /// The request or its answer did not cross whole (no connection, a
    /// timeout, an answer that is not the API's type).
    #[error("{request}: {}", with_causes(.error))]
    Transport { request: String, error: reqwest::Error },
    /// The scheduler answered nothing (204) where the API gives an answer.
    #[error("{request}: the scheduler answered nothing")]
    NoAnswer { request: String },
}

/// An error with its causes, `: `-separated (a transport error's cause, say
/// "connection refused", is what tells an operator what went wrong).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// The scheduler's dispatch API, with an executor token.
#[derive(Clone)]
pub struct Scheduler {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Scheduler {
    /// The scheduler at `base` (its URL), spoken to with executor token `token`.
    pub fn new(base: &str, token: &str) -> Result<Scheduler, ClientError> {
        // Idle connections are let go before the scheduler closes them (at its header
        // timeout, 10 s by default), so that a request never races a closing connection.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .map_err(|error| ClientError::Transport { request: "a client for the scheduler".to_owned(), error })?;
        Ok(Scheduler { http, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() })
    }

    /// Registers this executor (again, after a restart).
    pub async fn register(&self, registration: &ExecutorRegistration) -> Result<Executor, ClientError> {
        self.answered("/v1/executors/register".to_owned(), Some(registration)).await
    }

    /// Says executor `executor` is alive, with its listener's health.
    pub async fn heartbeat(&self, executor: i64, heartbeat: &Heartbeat) -> Result<(), ClientError> {
        let path = format!("/v1/executors/{executor}/heartbeat");
        self.post::<_, serde::de::IgnoredAny>(path, Some(heartbeat)).await.map(drop)
    }

    /// Claims work for `executor`, waiting up to `wait_s` seconds; none if there was none.
    pub async fn claim(&self, executor: i64, wait_s: u32) -> Result<Option<Assignment>, ClientError> {
        self.post::<(), _>(format!("/v1/executors/{executor}/claim?wait_s={wait_s}"), None).await
    }

    /// Reports migration `id`'s progress as its source `executor` (which keeps its lease).
    pub async fn report_progress(
        &self,
        id: i64,
        executor: i64,
        report: &ProgressReport,
    ) -> Result<ProgressAnswer, ClientError> {
        self.answered(format!("/v1/migrations/{id}/progress?executor={executor}"), Some(report)).await
    }

    /// Ends migration `id` as `executor` says. The answer (the migration's
    /// detail) is not read: once the scheduler said yes, the end is recorded,
    /// and an answer this executor cannot read must not make it act otherwise.
    pub async fn complete(&self, id: i64, executor: i64, completion: &Completion) -> Result<(), ClientError> {
        let path = format!("/v1/migrations/{id}/complete?executor={executor}");
        self.post::<_, serde::de::IgnoredAny>(path, Some(completion)).await.map(drop)
    }

    /// Says where recovering migration `id`'s VM runs, as `executor` at its source site.
    pub async fn recover(
        &self,
        id: i64,
        executor: i64,
        report: &RecoveryReport,
    ) -> Result<MigrationDetail, ClientError> {
        self.answered(format!("/v1/migrations/{id}/recover?executor={executor}"), Some(report)).await
    }

    /// Logs a network step in migration `id`'s events, as `executor` (the answer is not read).
    pub async fn log_network(&self, id: i64, executor: i64, report: &NetworkReport) -> Result<(), ClientError> {
        let path = format!("/v1/migrations/{id}/network?executor={executor}");
        self.post::<_, serde::de::IgnoredAny>(path, Some(report)).await.map(drop)
    }

    /// Reports the replicas `executor` sends (and what it runs, fences,
    /// quarantines) and hears its replication plan.
    pub async fn replication(&self, executor: i64, report: &ReplicationReport) -> Result<ReplicationPlan, ClientError> {
        self.answered(format!("/v1/executors/{executor}/replication"), Some(report)).await
    }

    /// Says how `executor`'s restart of a lost site's VM (recovery `recovery`) went.
    pub async fn restart_outcome(
        &self,
        recovery: i64,
        executor: i64,
        outcome: &RestartOutcome,
    ) -> Result<VmRecovery, ClientError> {
        self.answered(format!("/v1/recoveries/{recovery}/outcome?executor={executor}"), Some(outcome)).await
    }

    /// POSTs `body` to `path`, whose answer the API always gives.
    async fn answered<B: Serialize, R: DeserializeOwned>(
        &self,
        path: String,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let request = format!("POST {path}");
        self.post(path, body).await?.ok_or(ClientError::NoAnswer { request })
    }

    /// POSTs `body` to `path`; `None` for 204.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: String,
        body: Option<&B>,
    ) -> Result<Option<R>, ClientError> {
        let request = format!("POST {path}");
        let transport = |error| ClientError::Transport { request: request.clone(), error };
        let mut sending = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            sending = sending.json(body);
        }
        let response = sending.send().await.map_err(transport)?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => (Some(body.error.code), body.error.message),
                Err(_) => (None, text),
            };
            return Err(ClientError::Refused { request, status, code, message });
        }
        Ok(Some(response.json().await.map_err(transport)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliotrope_api_spec::VmRunsAt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A scheduler that answers one request with `status` and `body`, at the URL returned.
    async fn answering(status: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0; 4096];
            // The request's head and its (small) JSON body, by its Content-Length.
            loop {
                let n = tcp.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{address}")
    }

    fn done() -> Completion {
        Completion { state: heliotrope_api_spec::MigrationState::Done, detail: "runs here".to_owned() }
    }

    #[tokio::test]
    async fn a_refusal_carries_its_status_code_and_message() {
        let body = r#"{"error":{"code":"not_in_cutover","message":"migration 7 is transferring: it is done only after cutover"}}"#;
        let scheduler = Scheduler::new(&answering("409 Conflict", body).await, "token").unwrap();
        match scheduler.complete(7, 1, &done()).await {
            Err(ClientError::Refused { request, status, code, message }) => {
                assert_eq!(request, "POST /v1/migrations/7/complete?executor=1");
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(code, Some(ErrorCode::NotInCutover));
                assert_eq!(message, "migration 7 is transferring: it is done only after cutover");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refusal_not_in_the_apis_shape_has_no_code() {
        let scheduler = Scheduler::new(&answering("502 Bad Gateway", "upstream down").await, "token").unwrap();
        match scheduler.complete(7, 1, &done()).await {
            Err(ClientError::Refused { status, code: None, message, .. }) => {
                assert_eq!(status, StatusCode::BAD_GATEWAY);
                assert_eq!(message, "upstream down");
            }
            other => panic!("expected a refusal without a code, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_to_claim_is_none_and_a_missing_answer_an_error() {
        let scheduler = Scheduler::new(&answering("204 No Content", "").await, "token").unwrap();
        assert!(scheduler.claim(3, 10).await.unwrap().is_none());
        let scheduler = Scheduler::new(&answering("204 No Content", "").await, "token").unwrap();
        let answer = scheduler.recover(7, 1, &RecoveryReport { runs_at: VmRunsAt::Source }).await;
        assert!(matches!(answer, Err(ClientError::NoAnswer { .. })), "{answer:?}");
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_a_transport_error_naming_its_cause() {
        // A port nothing listens on: bound, then let go.
        let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let scheduler = Scheduler::new(&format!("http://{address}"), "token").unwrap();
        let error = scheduler.heartbeat(3, &Heartbeat { listener: None }).await.unwrap_err();
        assert!(matches!(error, ClientError::Transport { .. }), "{error:?}");
        assert!(error.to_string().starts_with("POST /v1/executors/3/heartbeat: "), "{error}");
    }
}
