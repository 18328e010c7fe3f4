//! The part of ghz's call templates the scenarios use, over request data and
//! metadata text: `{{.RequestNumber}}`, `{{.WorkerID}}`, `{{.UUID}}`, the
//! call names and timestamps, `{{newUUID}}`, `{{randomString N}}`,
//! `{{randomInt MIN MAX}}`, and Prism's `{{.SessionToken}}`. A template is
//! parsed once; an unknown action is an error at load time, not per call.

use std::time::SystemTime;

use rand::Rng;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
    NewUuid,
    RandomString(usize),
    RandomInt(i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    SessionToken,
    RequestNumber,
    WorkerId,
    Uuid,
    FullyQualifiedName,
    MethodName,
    ServiceName,
    InputName,
    OutputName,
    IsClientStreaming,
    IsServerStreaming,
    Timestamp,
    TimestampUnix,
    TimestampUnixMilli,
    TimestampUnixNano,
}

/// What a call's template is filled with.
pub struct CallContext<'a> {
    pub session_token: &'a str,
    pub method: &'a prost_reflect::MethodDescriptor,
    pub request_number: u64,
    pub worker_id: usize,
}

#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template: {text}"))?;
            parts.push(action(rest[start + 2..start + end].trim())?);
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True when every call renders the same text (given the session), so
    /// the request can be encoded once.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Text(_) => true,
            Part::Var(v) => matches!(
                v,
                Var::SessionToken
                    | Var::FullyQualifiedName
                    | Var::MethodName
                    | Var::ServiceName
                    | Var::InputName
                    | Var::OutputName
                    | Var::IsClientStreaming
                    | Var::IsServerStreaming
            ),
            _ => false,
        })
    }

    pub fn uses_session_token(&self) -> bool {
        self.parts.contains(&Part::Var(Var::SessionToken))
    }

    /// The text with only `{{.SessionToken}}` filled in and every other
    /// action left for ghz to execute.
    pub fn with_session_token(text: &str, token: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(end) = rest[start..].find("}}") else {
                break;
            };
            out.push_str(&rest[..start]);
            let inner = &rest[start..start + end + 2];
            if inner[2..inner.len() - 2].trim() == ".SessionToken" {
                out.push_str(token);
            } else {
                out.push_str(inner);
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out
    }

    pub fn render(&self, ctx: &CallContext<'_>) -> String {
        let mut out = String::new();
        let mut rng = rand::thread_rng();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&var(*v, ctx)),
                Part::NewUuid => out.push_str(&uuid_v4()),
                Part::RandomString(n) => {
                    let n = if *n == 0 { rng.gen_range(2..=16) } else { *n };
                    out.extend((0..n).map(|_| {
                        const CHARS: &[u8] =
                            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                        CHARS[rng.gen_range(0..CHARS.len())] as char
                    }));
                }
                Part::RandomInt(lo, hi) => out.push_str(&rng.gen_range(*lo..*hi).to_string()),
            }
        }
        out
    }
}

fn action(inner: &str) -> Result<Part, String> {
    if let Some(name) = inner.strip_prefix('.') {
        let v = match name {
            "SessionToken" => Var::SessionToken,
            "RequestNumber" => Var::RequestNumber,
            "WorkerID" => Var::WorkerId,
            "UUID" => Var::Uuid,
            "FullyQualifiedName" => Var::FullyQualifiedName,
            "MethodName" => Var::MethodName,
            "ServiceName" => Var::ServiceName,
            "InputName" => Var::InputName,
            "OutputName" => Var::OutputName,
            "IsClientStreaming" => Var::IsClientStreaming,
            "IsServerStreaming" => Var::IsServerStreaming,
            "Timestamp" => Var::Timestamp,
            "TimestampUnix" => Var::TimestampUnix,
            "TimestampUnixMilli" => Var::TimestampUnixMilli,
            "TimestampUnixNano" => Var::TimestampUnixNano,
            _ => return Err(format!("unknown template variable `{{{{{inner}}}}}`")),
        };
        return Ok(Part::Var(v));
    }
    let words: Vec<&str> = inner.split_whitespace().collect();
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("`{{{{{inner}}}}}`: `{s}` is not an integer"))
    };
    match words.as_slice() {
        ["newUUID"] => Ok(Part::NewUuid),
        ["randomString", n] => Ok(Part::RandomString(int(n)?.max(0) as usize)),
        ["randomInt", lo, hi] => {
            let (lo, hi) = (int(lo)?, int(hi)?);
            if lo >= hi {
                return Err(format!("`{{{{{inner}}}}}`: the range is empty"));
            }
            Ok(Part::RandomInt(lo, hi))
        }
        _ => Err(format!("unsupported template action `{{{{{inner}}}}}`")),
    }
}

fn var(v: Var, ctx: &CallContext<'_>) -> String {
    let now = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    };
    let m = ctx.method;
    match v {
        Var::SessionToken => ctx.session_token.to_string(),
        Var::RequestNumber => ctx.request_number.to_string(),
        Var::WorkerId => format!("g{}c0", ctx.worker_id),
        Var::Uuid => uuid_v4(),
        Var::FullyQualifiedName => m.full_name().to_string(),
        Var::MethodName => m.name().to_string(),
        Var::ServiceName => m.parent_service().name().to_string(),
        Var::InputName => m.input().name().to_string(),
        Var::OutputName => m.output().name().to_string(),
        Var::IsClientStreaming => m.is_client_streaming().to_string(),
        Var::IsServerStreaming => m.is_server_streaming().to_string(),
        Var::Timestamp => humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        Var::TimestampUnix => now().as_secs().to_string(),
        Var::TimestampUnixMilli => now().as_millis().to_string(),
        Var::TimestampUnixNano => now().as_nanos().to_string(),
    }
}

/// A random (version 4) UUID.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method() -> prost_reflect::MethodDescriptor {
        let pool = prost_reflect::DescriptorPool::decode(prism_proto::FILE_DESCRIPTOR_SET).unwrap();
        pool.get_service_by_name("prism.keyvalue.v1.KeyValueService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Get")
            .unwrap()
    }

    #[test]
    fn renders_the_variables_and_functions_the_scenarios_use() {
        let m = method();
        let t = Template::parse(
            r#"{"t": "{{.SessionToken}}", "k": "key-{{ .RequestNumber }}", "w": "{{.WorkerID}}",
                "n": "{{.MethodName}}", "r": {{randomInt 5 6}}, "s": "{{randomString 4}}", "u": "{{newUUID}}"}"#,
        )
        .unwrap();
        assert!(!t.is_fixed());
        assert!(t.uses_session_token());
        let out = t.render(&CallContext {
            session_token: "tok",
            method: &m,
            request_number: 42,
            worker_id: 3,
        });
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["t"], "tok");
        assert_eq!(v["k"], "key-42");
        assert_eq!(v["w"], "g3c0");
        assert_eq!(v["n"], "Get");
        assert_eq!(v["r"], 5);
        assert_eq!(v["s"].as_str().unwrap().len(), 4);
        assert_eq!(v["u"].as_str().unwrap().len(), 36);
        assert_eq!(&v["u"].as_str().unwrap()[14..15], "4");

        let fixed = Template::parse(r#"{"t": "{{.SessionToken}}", "k": "hot"}"#).unwrap();
        assert!(fixed.is_fixed());
    }

    #[test]
    fn unknown_actions_fail_at_parse_time() {
        for bad in [
            "{{.Nope}}",
            "{{randomInt 3 3}}",
            "{{randomInt a 3}}",
            "{{sprig}}",
            "{{.RequestNumber",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_session_token_is_filled_for_ghz() {
        let out = Template::with_session_token(
            r#"{"t": "{{ .SessionToken }}", "k": "{{.RequestNumber}}"}"#,
            "abc",
        );
        assert_eq!(out, r#"{"t": "abc", "k": "{{.RequestNumber}}"}"#);
    }
}
