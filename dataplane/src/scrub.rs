//! Keeps an upstream's injected credential out of what goes back to the agent: every string
//! leaf of a response message that contains one of its secret values has it replaced.

use crate::hooks::{Direction, MessageHook, RequestCtx, Verdict};
use crate::jsonrpc::MessageInfo;
use simd_json::BorrowedValue;
use std::borrow::Cow;

pub const MARK: &str = "[REDACTED:upstream-credential]";

pub struct ScrubHook;

fn scrub(v: &mut BorrowedValue<'_>, secrets: &[String]) -> bool {
    match v {
        BorrowedValue::String(s) => {
            if secrets.iter().any(|x| s.contains(x.as_str())) {
                let mut out = s.to_string();
                for x in secrets {
                    out = out.replace(x.as_str(), MARK);
                }
                *s = Cow::Owned(out);
                return true;
            }
            false
        }
        BorrowedValue::Array(a) => a.iter_mut().fold(false, |c, x| scrub(x, secrets) | c),
        BorrowedValue::Object(m) => m.iter_mut().fold(false, |c, (_, x)| scrub(x, secrets) | c),
        _ => false,
    }
}

impl MessageHook for ScrubHook {
    fn name(&self) -> &'static str {
        "credential-scrub"
    }

    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, _: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict {
        let Some(c) = ctx.credential.as_ref().filter(|_| dir == Direction::Response) else { return Verdict::Pass };
        if scrub(value, &c.secrets) {
            tracing::warn!(upstream = %ctx.upstream, "the upstream echoed its injected credential; scrubbed from the answer");
            Verdict::Changed
        } else {
            Verdict::Pass
        }
    }
}
