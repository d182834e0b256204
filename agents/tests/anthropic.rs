//! The anthropic backend against a wiremock Messages API: retries, errors, timeouts, the tool
//! loop and its confinement, usage (cache tokens apart) and cost.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{config, Worktree};
use wiggum_agents::anthropic::AnthropicAgent;
use wiggum_agents::{Agent, AgentError};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn usage(input: u64, output: u64, read: u64, write: u64) -> Value {
    json!({"input_tokens": input, "output_tokens": output,
        "cache_read_input_tokens": read, "cache_creation_input_tokens": write})
}

fn text_reply(text: &str, u: Value) -> Value {
    json!({"id": "msg_02", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": u})
}

fn tool_reply(calls: &[(&str, Value)], u: Value) -> Value {
    let mut content = vec![json!({"type": "text", "text": "Let me do that."})];
    content.extend(calls.iter().enumerate().map(|(i, (name, input))| {
        json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": input})
    }));
    json!({"id": "msg_01", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": content,
        "stop_reason": "tool_use", "stop_sequence": null, "usage": u})
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

async fn agent(server: &MockServer) -> AnthropicAgent {
    AnthropicAgent::from_config(&config("anthropic", server.uri(), "claude-sonnet-4-5")).unwrap()
}

async fn requests(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_waited_out_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.3")
                .set_body_json(error_body(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                )),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(text_reply("done", usage(5, 1, 0, 0))),
        )
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let started = Instant::now();
    let reply = agent(&server).await.call(&wt.request("hi")).await.unwrap();
    assert_eq!(reply.text, "done");
    assert_eq!(reply.retries, 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn overloaded_storm_gives_up_at_the_retry_bound() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(529).set_body_json(error_body("overloaded_error", "Overloaded")),
        )
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let err = agent(&server)
        .await
        .call(&wt.request("hi"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 529") && msg.contains("overloaded_error"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
    assert_eq!(requests(&server).await.len(), 4);
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_the_key_never_shows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("x-api-key", "sk-ant-test-secret"))
        .respond_with(ResponseTemplate::new(401).set_body_json(error_body(
            "authentication_error",
            "invalid x-api-key sk-ant-test-secret",
        )))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let agent = agent(&server)
        .await
        .with_api_key("sk-ant-test-secret")
        .unwrap();
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("authentication_error"),
        "{msg}"
    );
    assert!(!msg.contains("sk-ant-test-secret"), "key leaked: {msg}");
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn billing_limit_is_permanent_and_long_prompt_is_overflow() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(error_body(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(error_body(
            "invalid_request_error",
            "prompt is too long: 215000 tokens > 200000 maximum",
        )))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let agent = agent(&server).await;
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("credit balance"), "{err}");
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(matches!(err, AgentError::ContextOverflow { .. }), "{err:?}");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn malformed_json_is_a_clear_permanent_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string("{\"type\": \"message\", \"content\": ["),
        )
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let err = agent(&server)
        .await
        .call(&wt.request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}

#[tokio::test]
async fn slow_server_past_the_call_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(text_reply("late", usage(1, 1, 0, 0)))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let mut req = wt.request("hi");
    req.timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let err = agent(&server).await.call(&req).await.unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    // Not the 30 s the server takes to answer.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn slow_server_past_the_request_timeout_is_retried_as_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(text_reply("late", usage(1, 1, 0, 0)))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let mut cfg = config("anthropic", server.uri(), "claude-sonnet-4-5");
    cfg.request_timeout = Some("100ms".into());
    cfg.max_retries = Some(1);
    let agent = AnthropicAgent::from_config(&cfg).unwrap();
    let wt = Worktree::new();
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("request_timeout = 100ms"), "{err}");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn tool_loop_writes_inside_the_worktree_and_sums_usage_with_cache_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_reply(
            &[
                (
                    "write_file",
                    json!({"path": "notes/plan.md", "content": "step 1\n"}),
                ),
                ("run_command", json!({"command": "cat notes/plan.md"})),
            ],
            usage(1200, 100, 0, 3000),
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(text_reply(
            "Planned. <promise>DONE</promise>",
            usage(300, 40, 3000, 500),
        )))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let reply = agent(&server)
        .await
        .call(&wt.request("plan it"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(wt.path.join("notes/plan.md")).unwrap(),
        "step 1\n"
    );
    assert_eq!(reply.text, "Planned. <promise>DONE</promise>");
    assert_eq!(reply.usage.input_tokens, 1500);
    assert_eq!(reply.usage.output_tokens, 140);
    assert_eq!(reply.usage.cache_read_tokens, 3000);
    assert_eq!(reply.usage.cache_write_tokens, 3500);
    // claude-sonnet-4-5: $3 input, $15 output, $0.30 cache read, $3.75 cache write per million.
    let expected = (1500.0 * 3.0 + 140.0 * 15.0 + 3000.0 * 0.3 + 3500.0 * 3.75) / 1e6;
    assert!((reply.cost_usd.unwrap() - expected).abs() < 1e-12);
    assert_eq!(reply.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["model"], "claude-sonnet-4-5");
    assert_eq!(sent[0]["tools"][0]["name"], "read_file");
    let msgs = sent[1]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["role"], "assistant");
    let results = msgs[2]["content"].as_array().unwrap();
    assert_eq!(results[0]["tool_use_id"], "toolu_0");
    assert_eq!(results[0]["is_error"], false);
    let ran = results[1]["content"].as_str().unwrap();
    assert!(
        ran.contains("exit code 0") && ran.contains("step 1"),
        "{ran}"
    );
    // The conversation so far is marked for caching on its last block only.
    assert_eq!(results[1]["cache_control"]["type"], "ephemeral");
    assert!(msgs[0]["content"][0].get("cache_control").is_none());
}

#[tokio::test]
async fn escaping_writes_are_refused_and_reported_as_tool_errors() {
    let server = MockServer::start().await;
    let wt = Worktree::new();
    let outside = wt.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, wt.path.join("link")).unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_reply(
            &[
                ("write_file", json!({"path": "../x", "content": "pwned"})),
                ("write_file", json!({"path": "/etc/x", "content": "pwned"})),
                ("write_file", json!({"path": "link/x", "content": "pwned"})),
                ("read_file", json!({"path": "link/../../outside/secret"})),
            ],
            usage(10, 10, 0, 0),
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(text_reply("ok", usage(1, 1, 0, 0))))
        .mount(&server)
        .await;
    let reply = agent(&server)
        .await
        .call(&wt.request("escape"))
        .await
        .unwrap();
    assert_eq!(reply.text, "ok");
    assert!(!wt.dir.path().join("x").exists());
    assert!(!outside.join("x").exists());
    let sent = requests(&server).await;
    let results = sent[1]["messages"][2]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r["is_error"], true, "{r}");
    }
    assert!(results[2]["content"]
        .as_str()
        .unwrap()
        .contains("outside the worktree"));
}
