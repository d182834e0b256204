//! `wiggum task` end to end against a wiremock OpenAI-compatible server: the model works
//! through the tool loop (write_file) and the task converges on its second iteration.

mod common;

use common::{beads, wiggum_command, TempRepo};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn tool_call(id: &str, content: &str) -> serde_json::Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "model": "qwen2.5-coder:7b",
        "choices": [{
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": format!("call_{id}"),
                    "type": "function",
                    "function": {
                        "name": "write_file",
                        "arguments": json!({"path": "answer.txt", "content": content}).to_string()
                    }
                }]
            }
        }],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
                  "prompt_tokens_details": {"cached_tokens": 200}}
    })
}

fn final_message(id: &str, text: &str) -> serde_json::Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "model": "qwen2.5-coder:7b",
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}
        }],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 20, "total_tokens": 1220}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_converges_in_two_iterations_through_the_openai_tool_loop() {
    let server = MockServer::start().await;
    // Each response answers exactly one request, in order: iteration 1 writes a wrong answer,
    // iteration 2 the right one.
    let script = [
        tool_call("1", "41\n"),
        final_message("2", "I wrote 41 to answer.txt."),
        tool_call("3", "42\n"),
        final_message("4", "Fixed: answer.txt now says 42."),
    ];
    for (i, body) in script.into_iter().enumerate() {
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .up_to_n_times(1)
            .with_priority((i + 1) as u8)
            .mount(&server)
            .await;
    }

    let repo = TempRepo::new();
    let base_url = format!("{}/v1", server.uri());
    let repo_dir = repo.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        wiggum_command()
            .args([
                "task",
                "Make answer.txt say 42",
                "--agent",
                "openai",
                "--model",
                "qwen2.5-coder:7b",
                "--check",
                "grep -qx 42 answer.txt",
                "--json",
            ])
            .current_dir(&repo_dir)
            .env("OPENAI_BASE_URL", &base_url)
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["outcome"], "converged");
    assert_eq!(j["iterations"], 2);
    // Usage summed over both rounds of both iterations: input excludes cached tokens.
    assert_eq!(j["usage"]["input_tokens"], (800 + 1200) * 2);
    assert_eq!(j["usage"]["cache_read_tokens"], 200 * 2);
    assert_eq!(j["usage"]["output_tokens"], (50 + 20) * 2);
    assert_eq!(repo.read("answer.txt"), "42\n");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 4);
    // The second round of a call carries the tool result back to the model.
    let second: serde_json::Value = serde_json::from_slice(&requests[1].body).unwrap();
    let messages = second["messages"].as_array().unwrap();
    assert!(messages.iter().any(|m| m["role"] == "tool"), "{second:#}");
    // Iteration 2's prompt carries iteration 1's failing check, not its transcript.
    let third: serde_json::Value = serde_json::from_slice(&requests[2].body).unwrap();
    let prompt = third["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect::<String>();
    assert!(
        prompt.contains("`grep -qx 42 answer.txt` exited 1"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("I wrote 41"),
        "no transcript in a fresh prompt"
    );
    let iterations = beads(repo.path())
        .into_iter()
        .filter(|b| b["title"].as_str().unwrap_or("").starts_with("iteration "))
        .count();
    assert_eq!(iterations, 2);
}
