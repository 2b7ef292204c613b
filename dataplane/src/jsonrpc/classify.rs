//! What one JSON-RPC message is: its kind, method, id and the MCP names it carries.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Error,
    /// A JSON document on a plain HTTP route (not JSON-RPC).
    Document,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Notification => "notification",
            Kind::Response => "response",
            Kind::Error => "error",
            Kind::Document => "document",
        }
    }
}

/// The classification of one message. `id` is the id's JSON text (`"a"` keeps its quotes, `7`
/// does not), so ids of different types never collide when requests and responses are matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub kind: Kind,
    pub method: Option<String>,
    pub id: Option<String>,
    /// `params.name` of `tools/call`.
    pub tool: Option<String>,
    /// `params.uri` of `resources/read`, `resources/subscribe`, `resources/unsubscribe`.
    pub resource_uri: Option<String>,
    /// `params.name` of `prompts/get`.
    pub prompt: Option<String>,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    /// The MCP task the message belongs to: `params.taskId` of a `tasks/…` request or
    /// `notifications/tasks/status`, `result.task.taskId` of an answer that created a task, or
    /// the task `_meta` relates the message to. An answer to a task's follow-up gets it from
    /// its request (session tracking).
    pub task: Option<String>,
    /// The record's event id of the call this message is (a request: the id its `request`
    /// event will have) or answers: set by session tracking when recording is on.
    pub call: Option<String>,
}

impl MessageInfo {
    /// The task a request follows up (`tasks/get`, `tasks/result`, `tasks/cancel`, …: any
    /// `tasks/` method naming `params.taskId`).
    pub fn followed_task(&self) -> Option<&str> {
        self.task.as_deref().filter(|_| self.kind == Kind::Request && self.method.as_deref().is_some_and(|m| m.starts_with("tasks/")))
    }

    /// The classification of a plain JSON document.
    pub fn document() -> Self {
        MessageInfo {
            kind: Kind::Document,
            method: None,
            id: None,
            tool: None,
            resource_uri: None,
            prompt: None,
            error_code: None,
            error_message: None,
            task: None,
            call: None,
        }
    }
}

/// Longest id accepted (as JSON text). Ids are counters and UUIDs; the gateway keeps every
/// pending request's id (and a task's) until its answer, so ids as long as a body would let a
/// peer make it hold as much memory as it sends.
pub const MAX_ID_BYTES: usize = 1024;

fn id_text(v: &BorrowedValue<'_>) -> Result<Option<String>, &'static str> {
    match v {
        BorrowedValue::String(s) if s.len() > MAX_ID_BYTES => Err("the id is longer than 1,024 bytes; use a short id (a counter or a UUID)"),
        BorrowedValue::String(s) => Ok(Some(serde_json::to_string(s.as_ref()).unwrap_or_default())),
        BorrowedValue::Static(simd_json::StaticNode::Null) => Ok(None),
        BorrowedValue::Static(simd_json::StaticNode::Bool(_)) => Err("id must be a string, a number or null"),
        BorrowedValue::Static(n) => Ok(Some(n.to_string())),
        _ => Err("id must be a string, a number or null"),
    }
}

fn param_str(v: &BorrowedValue<'_>, key: &str) -> Option<String> {
    v.get("params").and_then(|p| p.get(key)).and_then(|s| s.as_str()).map(str::to_owned)
}

/// The `_meta` key that relates a message to a task (MCP 2025-11-25).
pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// The task `part._meta` relates a message to.
fn related_task(part: Option<&BorrowedValue<'_>>) -> Option<String> {
    part?.get("_meta")?.get(RELATED_TASK)?.get("taskId")?.as_str().map(str::to_owned)
}

/// Classify one message, or say why it is not a JSON-RPC 2.0 message.
pub fn classify(v: &BorrowedValue<'_>) -> Result<MessageInfo, &'static str> {
    let obj = v.as_object().ok_or("a message must be a JSON object")?;
    if obj.get("jsonrpc").and_then(|j| j.as_str()) != Some("2.0") {
        return Err("\"jsonrpc\" must be \"2.0\"");
    }
    let id = match obj.get("id") {
        Some(idv) => Some(id_text(idv)?),
        None => None,
    };
    let mut info = MessageInfo {
        kind: Kind::Request,
        method: None,
        id: id.clone().flatten(),
        tool: None,
        resource_uri: None,
        prompt: None,
        error_code: None,
        error_message: None,
        task: None,
        call: None,
    };
    if let Some(m) = obj.get("method") {
        let method = m.as_str().ok_or("\"method\" must be a string")?;
        if obj.contains_key("result") || obj.contains_key("error") {
            return Err("a request cannot carry \"result\" or \"error\"");
        }
        if let Some(p) = obj.get("params") {
            if !(p.is_object() || p.is_array()) {
                return Err("\"params\" must be an object or an array");
            }
        }
        info.kind = if id.is_some() { Kind::Request } else { Kind::Notification };
        if id == Some(None) {
            // `"id": null` on a request is discouraged by JSON-RPC and forbidden by MCP.
            return Err("a request id must not be null");
        }
        match method {
            "tools/call" => info.tool = param_str(v, "name"),
            "prompts/get" => info.prompt = param_str(v, "name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                info.resource_uri = param_str(v, "uri")
            }
            _ => {}
        }
        info.task = if method.starts_with("tasks/") || method == "notifications/tasks/status" {
            param_str(v, "taskId")
        } else {
            related_task(v.get("params"))
        };
        info.method = Some(method.to_owned());
        return Ok(info);
    }
    match (obj.get("result"), obj.get("error")) {
        (Some(_), None) => {
            if id.is_none() {
                return Err("a response must carry an \"id\"");
            }
            info.kind = Kind::Response;
            let result = v.get("result");
            info.task = result.and_then(|r| r.get("task")).and_then(|t| t.get("taskId")).and_then(|t| t.as_str()).map(str::to_owned).or_else(|| related_task(result));
        }
        (None, Some(e)) => {
            info.kind = Kind::Error;
            let code = e.get("code").and_then(|c| c.as_i64()).ok_or("\"error.code\" must be an integer")?;
            info.error_code = Some(code);
            info.error_message = e.get("message").and_then(|m| m.as_str()).map(str::to_owned);
        }
        (Some(_), Some(_)) => return Err("a response cannot carry both \"result\" and \"error\""),
        (None, None) => return Err("a message needs \"method\", \"result\" or \"error\""),
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(src: &str) -> Result<MessageInfo, &'static str> {
        let mut b = src.as_bytes().to_vec();
        let v = simd_json::to_borrowed_value(&mut b).unwrap();
        classify(&v)
    }

    #[test]
    fn classifies_mcp_messages() {
        let i = info(r#"{"jsonrpc":"2.0","id":"x1","method":"tools/call","params":{"name":"get_weather","arguments":{}}}"#).unwrap();
        assert_eq!((i.kind, i.id.as_deref(), i.tool.as_deref()), (Kind::Request, Some("\"x1\""), Some("get_weather")));
        let i = info(r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///a"}}"#).unwrap();
        assert_eq!((i.id.as_deref(), i.resource_uri.as_deref()), (Some("3"), Some("file:///a")));
        let i = info(r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"p"}}"#).unwrap();
        assert_eq!(i.prompt.as_deref(), Some("p"));
        let i = info(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#).unwrap();
        assert_eq!(i.kind, Kind::Notification);
        let i = info(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap();
        assert_eq!(i.kind, Kind::Response);
        let i = info(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}"#).unwrap();
        assert_eq!((i.kind, i.error_code, i.error_message.as_deref()), (Kind::Error, Some(-32700), Some("bad")));
    }

    #[test]
    fn ids_past_the_limit_are_refused() {
        let at = |n: usize| info(&format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"ping"}}"#, "a".repeat(n)));
        assert!(at(MAX_ID_BYTES).is_ok());
        assert_eq!(at(MAX_ID_BYTES + 1).unwrap_err(), "the id is longer than 1,024 bytes; use a short id (a counter or a UUID)");
        assert!(info(&format!(r#"{{"jsonrpc":"2.0","id":"{}","result":{{}}}}"#, "b".repeat(5000))).is_err(), "answers too");
    }

    #[test]
    fn the_task_a_message_belongs_to() {
        let task = |src: &str| info(src).unwrap().task;
        let t = Some("t-1".to_owned());
        assert_eq!(task(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/result","params":{"taskId":"t-1"}}"#), t);
        assert_eq!(task(r#"{"jsonrpc":"2.0","method":"notifications/tasks/status","params":{"taskId":"t-1","status":"working"}}"#), t);
        assert_eq!(task(r#"{"jsonrpc":"2.0","id":1,"result":{"task":{"taskId":"t-1","status":"working"}}}"#), t, "CreateTaskResult");
        let related = r#"{"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t-1"}}}"#;
        assert_eq!(task(&format!(r#"{{"jsonrpc":"2.0","id":1,"result":{related}}}"#)), t, "a tasks/result answer");
        assert_eq!(task(&format!(r#"{{"jsonrpc":"2.0","id":"s","method":"elicitation/create","params":{related}}}"#)), t, "a server's request for a task");
        // Not a task: a tool's own argument named taskId, a non-string id, a `tasks/list`.
        assert_eq!(task(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"jira","taskId":"t-1"}}"#), None);
        assert_eq!(task(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":7}}"#), None);
        assert_eq!(task(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/list","params":{}}"#), None);
    }

    #[test]
    fn id_text_is_json_for_any_string() {
        let i = info(r#"{"jsonrpc":"2.0","id":"a\u0001\"é\ud83d\ude00","result":{}}"#).unwrap();
        let id = i.id.unwrap();
        let back: String = serde_json::from_str(&id).unwrap();
        assert_eq!(back, "a\u{1}\"é😀");
        let body = crate::jsonrpc::error_body(Some(&id), crate::jsonrpc::Code::Refused, "m", "r");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], back.as_str());
    }

    #[test]
    fn string_and_number_ids_differ() {
        let a = info(r#"{"jsonrpc":"2.0","id":"1","result":{}}"#).unwrap();
        let b = info(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn rejects_invalid_messages() {
        for (src, why) in [
            (r#"[1]"#, "a message must be a JSON object"),
            (r#"{"id":1,"method":"x"}"#, "\"jsonrpc\" must be \"2.0\""),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, "\"method\" must be a string"),
            (r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#, "id must be a string, a number or null"),
            (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, "id must be a string, a number or null"),
            (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, "a request id must not be null"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#, "\"params\" must be an object or an array"),
            (r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1}}"#, "a response cannot carry both \"result\" and \"error\""),
            (r#"{"jsonrpc":"2.0","id":1}"#, "a message needs \"method\", \"result\" or \"error\""),
            (r#"{"jsonrpc":"2.0","result":{}}"#, "a response must carry an \"id\""),
            (r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x"}}"#, "\"error.code\" must be an integer"),
        ] {
            assert_eq!(info(src), Err(why), "{src}");
        }
    }
}
