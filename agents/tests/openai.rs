//! The openai backend against a wiremock Chat Completions server: retries, errors, timeouts,
//! the tool loop and its confinement, usage and cost.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{config, Worktree};
use wiggum_agents::openai::OpenAiAgent;
use wiggum_agents::{build_agent, Agent, AgentError};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn completion(content: &str, prompt: u64, cached: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
    })
}

fn tool_calls(calls: &[(&str, Value)], prompt: u64, cached: u64, completion: u64) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            json!({"id": format!("call_{i}"), "type": "function",
                "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    json!({
        "id": "chatcmpl-0", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": calls}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
    })
}

async fn agent(server: &MockServer) -> OpenAiAgent {
    OpenAiAgent::from_config(&config("openai", format!("{}/v1", server.uri()), "gpt-4o")).unwrap()
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
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.3")
                .set_body_json(
                    json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
                ),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("done", 10, 0, 2)))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let started = Instant::now();
    let reply = agent(&server).await.call(&wt.request("hi")).await.unwrap();
    assert_eq!(reply.text, "done");
    assert_eq!(reply.retries, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retry-after was not honoured"
    );
}

#[tokio::test]
async fn server_error_storm_gives_up_at_the_retry_bound() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
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
        msg.contains("HTTP 500") && msg.contains("upstream exploded"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
    assert_eq!(requests(&server).await.len(), 4);
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_the_key_never_shows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-test-secret-1234"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": "Incorrect API key provided: sk-test-secret-1234.",
            "type": "invalid_request_error", "code": "invalid_api_key"}})))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let agent = agent(&server)
        .await
        .with_api_key("sk-test-secret-1234")
        .unwrap();
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("authentication"),
        "{msg}"
    );
    assert!(!msg.contains("sk-test-secret-1234"), "key leaked: {msg}");
    assert!(!format!("{agent:?}").is_empty());
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn insufficient_quota_is_permanent_even_as_429() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota", "code": "insufficient_quota"}})))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let err = agent(&server)
        .await
        .call(&wt.request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn context_length_error_is_overflow() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens.",
            "type": "invalid_request_error", "code": "context_length_exceeded"}})))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let err = agent(&server)
        .await
        .call(&wt.request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::ContextOverflow { .. }), "{err:?}");
}

#[tokio::test]
async fn malformed_json_is_a_clear_permanent_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>502 proxy</html>"))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let err = agent(&server)
        .await
        .call(&wt.request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Permanent { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not valid JSON") && msg.contains("<html>"),
        "{msg}"
    );
}

#[tokio::test]
async fn slow_server_past_the_call_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("late", 1, 0, 1))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let mut req = wt.request("hi");
    req.timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let err = agent(&server).await.call(&req).await.unwrap_err();
    assert!(matches!(err, AgentError::Timeout { after } if after == Duration::from_millis(300)));
    // Not the 30 s the server takes to answer.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn tool_loop_writes_inside_the_worktree_and_sums_usage_and_cost() {
    let server = MockServer::start().await;
    let write = json!({"path": "src/hello.rs", "content": "pub fn hi() {}\n"});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_calls(
            &[("write_file", write), ("list_dir", json!({"path": "src"}))],
            1000,
            400,
            50,
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion(
            "Wrote src/hello.rs <promise>DONE</promise>",
            1500,
            1000,
            80,
        )))
        .mount(&server)
        .await;
    let wt = Worktree::new();
    let reply = agent(&server)
        .await
        .call(&wt.request("add hi"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(wt.path.join("src/hello.rs")).unwrap(),
        "pub fn hi() {}\n"
    );
    assert!(reply.text.contains("<promise>DONE</promise>"));
    assert_eq!(reply.usage.input_tokens, 600 + 500);
    assert_eq!(reply.usage.cache_read_tokens, 400 + 1000);
    assert_eq!(reply.usage.output_tokens, 130);
    assert_eq!(reply.usage.cache_write_tokens, 0);
    // gpt-4o: $2.50 input, $1.25 cached, $10 output per million.
    let expected = (1100.0 * 2.5 + 1400.0 * 1.25 + 130.0 * 10.0) / 1e6;
    assert!((reply.cost_usd.unwrap() - expected).abs() < 1e-12);
    assert_eq!(reply.meta["tool_calls"], 2);
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    let msgs = sent[1]["messages"].as_array().unwrap();
    let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[0]["tool_call_id"], "call_0");
    assert!(tool_msgs[0]["content"]
        .as_str()
        .unwrap()
        .contains("wrote 15 bytes"));
    assert_eq!(tool_msgs[1]["content"], "hello.rs");
    assert_eq!(sent[0]["model"], "gpt-4o");
    assert_eq!(sent[0]["tools"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn escaping_writes_are_refused_and_reported_to_the_model() {
    let server = MockServer::start().await;
    let wt = Worktree::new();
    let outside = wt.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, wt.path.join("link")).unwrap();
    let abs = outside.join("abs.txt").display().to_string();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_calls(
            &[
                ("write_file", json!({"path": "../x", "content": "pwned"})),
                ("write_file", json!({"path": "/etc/x", "content": "pwned"})),
                ("write_file", json!({"path": abs, "content": "pwned"})),
                ("write_file", json!({"path": "link/x", "content": "pwned"})),
            ],
            10,
            0,
            10,
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("gave up", 10, 0, 1)))
        .mount(&server)
        .await;
    let reply = agent(&server)
        .await
        .call(&wt.request("escape"))
        .await
        .unwrap();
    assert_eq!(reply.text, "gave up");
    assert!(!wt.dir.path().join("x").exists());
    assert!(!outside.join("x").exists());
    assert!(!outside.join("abs.txt").exists());
    let sent = requests(&server).await;
    let errors: Vec<String> = sent[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|e| e.starts_with("ERROR:")), "{errors:?}");
    assert!(errors[3].contains("outside the worktree"), "{errors:?}");
}

#[tokio::test]
async fn tool_rounds_are_capped() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_calls(
            &[("list_dir", json!({}))],
            10,
            0,
            1,
        )))
        .mount(&server)
        .await;
    let mut cfg = config("openai", format!("{}/v1", server.uri()), "local-model");
    cfg.max_tool_rounds = Some(2);
    cfg.max_output_tokens = Some(100);
    let agent = build_agent(&cfg, std::path::Path::new(".")).unwrap();
    let wt = Worktree::new();
    let reply = agent.call(&wt.request("loop forever")).await.unwrap();
    assert_eq!(reply.meta["stop_reason"], "max_tool_rounds");
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0]["max_tokens"], 100);
    // A local server with an unknown model costs nothing.
    assert_eq!(reply.cost_usd, Some(0.0));
    assert_eq!(reply.usage.input_tokens, 30);
}

#[tokio::test]
async fn connection_refused_is_transient_and_retried() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config("openai", format!("http://127.0.0.1:{port}/v1"), "m");
    let agent = build_agent(&cfg, std::path::Path::new(".")).unwrap();
    let wt = Worktree::new();
    let err = agent.call(&wt.request("hi")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
}
