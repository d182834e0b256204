//! [`Plan`]: what the planner answers, read from its reply and checked ([`read_plan`]):
//! 2..`max_parts` subtasks, unique ids, non-empty prompts, `needs` naming known subtasks, no
//! cycle. Every problem is listed, so a repair request can name them all.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One planned subtask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedSubtask {
    /// Short id, unique in the plan (`[a-z0-9_-]`, used in branch names).
    pub id: String,
    pub title: String,
    pub prompt: String,
    /// Its own checks; the step's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Subtasks whose work must be merged before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Files it is expected to touch (advice for the polecat; not enforced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// A checked plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub subtasks: Vec<PlannedSubtask>,
}

impl Plan {
    /// The subtask with this id.
    pub fn get(&self, id: &str) -> Option<&PlannedSubtask> {
        self.subtasks.iter().find(|s| s.id == id)
    }
}

/// Reads the plan from a planner reply (a JSON object with `subtasks`, alone, fenced or among
/// prose) and checks it. `Err` lists every problem found, one per entry.
pub fn read_plan(reply: &str, max_parts: u32) -> Result<Plan, Vec<String>> {
    let Some(value) = find_plan_object(reply) else {
        return Err(vec![
            "the reply has no JSON object with a \"subtasks\" list: answer {\"subtasks\": \
             [{\"id\", \"title\", \"prompt\", \"checks\"?, \"needs\"?, \"files\"?}]}"
                .into(),
        ]);
    };
    let mut problems = Vec::new();
    let Some(items) = value.get("subtasks").and_then(|v| v.as_array()) else {
        return Err(vec!["\"subtasks\" must be a list of objects".into()]);
    };
    let mut subtasks = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let Some(obj) = item.as_object() else {
            problems.push(format!("subtask {n} is not an object"));
            continue;
        };
        let text = |key: &str| obj.get(key).and_then(|v| v.as_str()).unwrap_or("").trim();
        let list = |key: &str, problems: &mut Vec<String>| -> Vec<String> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| match v.as_str() {
                        Some(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                        _ => {
                            problems.push(format!(
                                "subtask {n}: \"{key}\" must be a list of non-empty strings"
                            ));
                            None
                        }
                    })
                    .collect(),
                Some(_) => {
                    problems.push(format!("subtask {n}: \"{key}\" must be a list of strings"));
                    Vec::new()
                }
            }
        };
        let id = text("id").to_string();
        if id.is_empty() {
            problems.push(format!("subtask {n} has no \"id\""));
        } else if !valid_id(&id) {
            problems.push(format!(
                "subtask {n}: id {id:?} must be 1 to 40 lower-case letters, digits, `-` or `_`"
            ));
        }
        let prompt = text("prompt").to_string();
        if prompt.is_empty() {
            problems.push(format!(
                "subtask {} has an empty \"prompt\"",
                if id.is_empty() {
                    n.to_string()
                } else {
                    format!("`{id}`")
                }
            ));
        }
        let title = match text("title") {
            "" => crate::run::record::bound_title(&prompt),
            t => t.to_string(),
        };
        let checks = list("checks", &mut problems);
        let needs = list("needs", &mut problems);
        let files = list("files", &mut problems);
        subtasks.push(PlannedSubtask {
            id,
            title,
            prompt,
            checks,
            needs,
            files,
        });
    }
    let count = items.len();
    if count < 2 {
        problems.push(format!(
            "the plan has {count} subtask{}; a split needs at least 2",
            if count == 1 { "" } else { "s" }
        ));
    }
    if count > max_parts as usize {
        problems.push(format!(
            "the plan has {count} subtasks; at most {max_parts} are allowed (max_parts)"
        ));
    }
    let mut seen = BTreeSet::new();
    for s in &subtasks {
        if !s.id.is_empty() && !seen.insert(s.id.as_str()) {
            problems.push(format!("subtask id `{}` is used twice", s.id));
        }
    }
    for s in &subtasks {
        for need in &s.needs {
            if need == &s.id {
                problems.push(format!("subtask `{}` needs itself", s.id));
            } else if !seen.contains(need.as_str()) {
                problems.push(format!(
                    "subtask `{}` needs `{need}`, which is not a subtask of the plan",
                    s.id
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&subtasks) {
        problems.push(format!("the needs form a cycle: {}", cycle.join(" -> ")));
    }
    if problems.is_empty() {
        Ok(Plan { subtasks })
    } else {
        Err(problems)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The first JSON object in `reply` that has a `subtasks` key.
fn find_plan_object(reply: &str) -> Option<serde_json::Value> {
    for (i, _) in reply.match_indices('{') {
        let mut stream =
            serde_json::Deserializer::from_str(&reply[i..]).into_iter::<serde_json::Value>();
        if let Some(Ok(v)) = stream.next() {
            if v.get("subtasks").is_some() {
                return Some(v);
            }
        }
    }
    None
}

/// A cycle among the needs (ids in order, the first repeated at the end), if any.
fn find_cycle(subtasks: &[PlannedSubtask]) -> Option<Vec<String>> {
    // A duplicate id is reported on its own; the first one stands for it here.
    let mut needs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in subtasks {
        needs.entry(s.id.as_str()).or_insert_with(|| {
            s.needs
                .iter()
                .map(String::as_str)
                .filter(|n| *n != s.id)
                .collect()
        });
    }
    // 0 = unseen, 1 = on the stack, 2 = done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        id: &'a str,
        needs: &BTreeMap<&'a str, Vec<&'a str>>,
        mark: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(id) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| *s == id).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(id, 1);
        stack.push(id);
        for n in needs.get(id).into_iter().flatten() {
            if needs.contains_key(n) {
                if let Some(c) = visit(n, needs, mark, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        mark.insert(id, 2);
        None
    }
    for id in needs.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(id, &needs, &mut mark, &mut stack) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_plan_among_prose_is_read() {
        let reply = "Here is the plan:\n```json\n{\"subtasks\": [\
            {\"id\": \"a\", \"title\": \"A\", \"prompt\": \"do a\"},\
            {\"id\": \"b\", \"prompt\": \"do b\", \"needs\": [\"a\"], \"checks\": [\"true\"]}]}\n```\n";
        let plan = read_plan(reply, 6).unwrap();
        assert_eq!(plan.subtasks.len(), 2);
        assert_eq!(plan.subtasks[1].needs, vec!["a"]);
        assert_eq!(plan.subtasks[1].title, "do b");
        assert_eq!(plan.subtasks[1].checks, vec!["true"]);
    }

    #[test]
    fn every_problem_of_a_bad_plan_is_listed() {
        let reply = r#"{"subtasks": [
            {"id": "a", "prompt": "x", "needs": ["b"]},
            {"id": "b", "prompt": "y", "needs": ["a"]},
            {"id": "a", "prompt": ""},
            {"id": "c", "prompt": "z", "needs": ["nope"]}]}"#;
        let problems = read_plan(reply, 3).unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("at most 3"), "{all}");
        assert!(all.contains("`a` is used twice"), "{all}");
        assert!(all.contains("empty \"prompt\""), "{all}");
        assert!(all.contains("needs `nope`"), "{all}");
        assert!(all.contains("cycle: a -> b -> a"), "{all}");
    }

    #[test]
    fn a_single_subtask_or_no_json_is_refused() {
        let one = read_plan(r#"{"subtasks":[{"id":"a","prompt":"p"}]}"#, 6).unwrap_err();
        assert!(one[0].contains("at least 2"), "{one:?}");
        let none = read_plan("I cannot plan this.", 6).unwrap_err();
        assert!(none[0].contains("no JSON object"), "{none:?}");
    }
}
