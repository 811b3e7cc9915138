//! The `webhook` network driver: the operator's SDN controller moves the
//! VM's addresses. The new site POSTs the move to it before the VM starts
//! and waits for its acknowledgement (a 2xx answer), trying again while
//! the controller is unreachable or answers 5xx, 408 or 429, until the
//! timeout. Any other answer (a redirect too) is a refusal.

use std::time::Duration;

use serde::Serialize;

use super::{Done, NetworkError, NetworkMove};

#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub url: String,
    /// Sent as a bearer token, if any.
    pub token: Option<String>,
    /// How long the controller gets to acknowledge, all tries together.
    pub timeout: Duration,
}

pub struct Webhook {
    http: reqwest::Client,
    options: WebhookOptions,
}

/// What the controller is told.
#[derive(Debug, Serialize)]
pub struct MoveNotice<'a> {
    /// The migration that moves it (absent for a restart after its site was lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<i64>,
    /// The recovery that restarted it at `to` after site `from` was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<i64>,
    pub vm: &'a str,
    pub addresses: &'a [std::net::IpAddr],
    /// The old site's name.
    pub from: &'a str,
    /// The new site's name.
    pub to: &'a str,
}

impl Webhook {
    pub fn new(options: WebhookOptions) -> Self {
        // A redirect would turn the POST into a GET and its answer into a false acknowledgement.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build();
        Webhook { http: http.unwrap_or_default(), options }
    }

    pub(super) async fn tell(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let notice = MoveNotice {
            migration: m.recovery.is_none().then_some(m.migration),
            recovery: m.recovery,
            vm: &m.vm,
            addresses: &m.addresses,
            from: &m.from_site,
            to: &m.to_site,
        };
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut request = self.http.post(&self.options.url).json(&notice).timeout(left);
            if let Some(token) = &self.options.token {
                request = request.bearer_auth(token);
            }
            let why = match request.send().await {
                Ok(answer) if answer.status().is_success() => {
                    return Ok(Some(format!("the SDN controller acknowledged ({}, try {tries})", answer.status())));
                }
                Ok(answer) if answer.status().is_server_error() || busy(answer.status()) => answer.status().to_string(),
                Ok(answer) => {
                    // The reply's text stays in this executor's log: the refusal goes into the
                    // migration's events, which viewers read.
                    let status = answer.status();
                    let text: String = answer.text().await.unwrap_or_default().chars().take(300).collect();
                    tracing::debug!(%status, reply = %text, "the SDN controller refused the move");
                    return Err(self.refused(format!("it answered {status}")));
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
                return Err(
                    self.refused(format!("no acknowledgement in {:?} ({tries} tries): {why}", self.options.timeout))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn refused(&self, why: String) -> NetworkError {
        NetworkError::Controller { url: self.options.url.clone(), why }
    }
}

/// A refusal worth trying again: the controller timed out or is busy.
fn busy(status: reqwest::StatusCode) -> bool {
    matches!(status, reqwest::StatusCode::REQUEST_TIMEOUT | reqwest::StatusCode::TOO_MANY_REQUESTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_refusal_names_the_status_and_keeps_the_reply_out_of_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/moves", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = tcp.read(&mut request).await;
            let body = "token=s3cr3t-from-the-controller";
            let reply =
                format!("HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            tcp.write_all(reply.as_bytes()).await.unwrap();
        });
        let webhook = Webhook::new(WebhookOptions { url, token: None, timeout: Duration::from_secs(5) });
        let change = NetworkMove {
            migration: 1,
            recovery: None,
            vm: "web".into(),
            addresses: vec!["192.0.2.10".parse().unwrap()],
            from_site: "A".into(),
            to_site: "B".into(),
            peer: None,
            tunnel_key: 0,
        };
        let refused = webhook.tell(&change).await.unwrap_err().to_string();
        assert!(refused.contains("403 Forbidden"), "{refused}");
        assert!(!refused.contains("s3cr3t"), "{refused}");
    }
}
