//! The OpenAI request bodies `serve` accepts, checked into generation parameters, and the error
//! object every refusal carries (`{"error": {"message", "type", "param", "code"}}`).

use crate::decode::SamplingOptions;
use crate::tokenizer::chat_template::Message;
use serde::Deserialize;
use serde_json::{json, Value};

/// A refusal: HTTP status and OpenAI's error object.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `POST /v1/completions`. Fields OpenAI defines but this server does not implement are accepted
/// at their neutral values and refused otherwise; fields OpenAI does not define are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: a positive logit of a token of the prompt or output so
    /// far is divided by it, a negative one multiplied (1: off).
    pub repetition_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub suffix: Option<String>,
    pub user: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: a positive logit of a token of the prompt or output so
    /// far is divided by it, a negative one multiplied (1: off).
    pub repetition_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub response_format: Option<Value>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Value>,
    pub name: Option<String>,
}

/// `POST /tokenize` (vLLM's shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub add_special_tokens: Option<bool>,
}

/// `POST /detokenize` (vLLM's shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

/// Generation parameters of a checked request.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// `None`: as many as the context leaves.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOptions,
    pub stop_strings: Vec<String>,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions: the prompt's tokens come back first, with their log-probabilities.
    pub echo: bool,
    /// Choices per prompt (completions; chat: 1).
    pub n: usize,
}

/// Choices one completion request may ask for (prompts × `n`).
pub const MAX_CHOICES: usize = 128;

/// The prompt of a completion request: text, or token ids.
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

fn positive(v: Option<i64>, name: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 1 => Ok(Some(x as usize)),
        Some(x) => Err(ApiError::invalid(format!("`{name}` is {x}: it must be at least 1"), Some(name))),
    }
}

/// The checks common to both endpoints.
#[allow(clippy::too_many_arguments)]
fn common(
    max_tokens: Option<i64>,
    max_tokens_name: &str,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    stop: Option<Value>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    penalties: [(Option<f64>, &str); 2],
    repetition_penalty: Option<f64>,
    logit_bias: &Option<serde_json::Map<String, Value>>,
    fresh_seed: u64,
) -> Result<GenParams, ApiError> {
    let max_tokens = positive(max_tokens, max_tokens_name)?;
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("`temperature` is {temperature}: it must be in [0, 2]"),
            Some("temperature"),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!("`top_p` is {top_p}: it must be in (0, 1]"), Some("top_p")));
    }
    let top_k = match top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(format!("`top_k` is {k}: it must be ≥ 0 (0 or -1: all)"), Some("top_k")))
        }
    };
    let n = match n {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid(format!("`n` is {n}: it must be in 1..={MAX_CHOICES}"), Some("n"))),
    };
    let [(frequency_penalty, _), (presence_penalty, _)] = penalties;
    for (p, name) in penalties {
        if p.is_some_and(|p| !(-2.0..=2.0).contains(&p)) {
            return Err(ApiError::invalid(
                format!("`{name}` is {}: it must be in [-2, 2]", p.unwrap_or_default()),
                Some(name),
            ));
        }
    }
    let repetition_penalty = repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::invalid(
            format!("`repetition_penalty` is {repetition_penalty}: it must be a positive number (1: off)"),
            Some("repetition_penalty"),
        ));
    }
    if logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::invalid("`logit_bias` is not supported", Some("logit_bias")));
    }
    let stop = match stop {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .into_iter()
            .map(|s| match s {
                Value::String(s) => Ok(s),
                other => {
                    Err(ApiError::invalid(format!("`stop` holds {other}: stop sequences are strings"), Some("stop")))
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`stop` is {other}: a string or a list of up to 4 strings"),
                Some("stop"),
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("`stop` holds an empty string", Some("stop")));
    }
    // a request without a seed samples from a fresh one
    let seed = seed.map(|s| s as u64).unwrap_or(fresh_seed);
    let stream = stream.unwrap_or(false);
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid("`stream_options` needs `stream: true`", Some("stream_options")));
    }
    Ok(GenParams {
        max_tokens,
        sampling: SamplingOptions {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed,
            // vLLM's repetition_penalty: every token of the prompt and the output so far
            repeat_penalty: repetition_penalty as f32,
            repeat_last_n: usize::MAX,
            frequency_penalty: frequency_penalty.unwrap_or(0.0) as f32,
            presence_penalty: presence_penalty.unwrap_or(0.0) as f32,
        },
        stop_strings: stop,
        logprobs: None,
        stream,
        include_usage: stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        echo: false,
        n,
    })
}

/// A completion request's prompts: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids.
fn prompts(v: Option<Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            Some("prompt"),
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter().map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(bad)).collect()
    };
    let out = match v {
        None => return Err(ApiError::invalid("you must provide a `prompt`", Some("prompt"))),
        Some(Value::String(s)) => vec![Prompt::Text(s)],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("`prompt` is an empty list", Some("prompt")))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.into_iter().map(|x| Prompt::Text(x.as_str().unwrap_or_default().to_string())).collect()
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => vec![Prompt::Tokens(ids(&a)?)],
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| match x.as_array() {
                Some(t) if !t.is_empty() => Ok(Prompt::Tokens(ids(t)?)),
                _ => Err(ApiError::invalid("`prompt` holds an empty list of token ids", Some("prompt"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    Ok(out)
}

impl CompletionRequest {
    pub fn check(self, fresh_seed: u64) -> Result<(Option<String>, Vec<Prompt>, GenParams), ApiError> {
        let echo = self.echo == Some(true);
        if self.best_of.is_some_and(|b| Some(b) != self.n.or(Some(1))) {
            return Err(ApiError::invalid(
                "`best_of` other than `n` is not supported (every sampled choice is returned)",
                Some("best_of"),
            ));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("`suffix` is not supported", Some("suffix")));
        }
        let prompt = prompts(self.prompt)?;
        let logprobs = match self.logprobs {
            None => None,
            Some(k @ 0..=5) => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(format!("`logprobs` is {k}: it must be in 0..=5"), Some("logprobs")))
            }
        };
        // `max_tokens: 0` with `echo` scores the prompt alone
        let scoring = echo && self.max_tokens == Some(0);
        let mut p = common(
            Some(if scoring { 1 } else { self.max_tokens.unwrap_or(16) }), // OpenAI's default for completions
            "max_tokens",
            self.temperature,
            self.top_p,
            self.top_k,
            self.seed,
            self.stop,
            self.n,
            self.stream,
            self.stream_options,
            [(self.frequency_penalty, "frequency_penalty"), (self.presence_penalty, "presence_penalty")],
            self.repetition_penalty,
            &self.logit_bias,
            fresh_seed,
        )?;
        p.logprobs = logprobs;
        p.echo = echo;
        if scoring {
            p.max_tokens = Some(0);
        }
        if prompt.len() * p.n > MAX_CHOICES {
            return Err(ApiError::invalid(
                format!("{} prompts × `n` {} is more than {MAX_CHOICES} choices", prompt.len(), p.n),
                Some("n"),
            ));
        }
        if p.stream && (echo || p.n > 1 || prompt.len() > 1) {
            return Err(ApiError::invalid(
                "`stream` is supported for one prompt, `n` 1, without `echo`",
                Some("stream"),
            ));
        }
        Ok((self.model, prompt, p))
    }
}

impl ChatRequest {
    pub fn check(self, fresh_seed: u64) -> Result<(Option<String>, Vec<Message>, GenParams), ApiError> {
        let Some(msgs) = self.messages else {
            return Err(ApiError::invalid("you must provide `messages`", Some("messages")));
        };
        if msgs.is_empty() {
            return Err(ApiError::invalid("`messages` is empty", Some("messages")));
        }
        let mut messages = vec![];
        for (i, m) in msgs.into_iter().enumerate() {
            let param = format!("messages[{i}]");
            if !["system", "user", "assistant", "developer"].contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("{param}.role is `{}`: one of system, developer, user, assistant", m.role),
                    Some(&param),
                ));
            }
            let content = match m.content {
                Some(Value::String(s)) => s,
                // a list of content parts: text parts only
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(ApiError::invalid(
                            format!("{param}.content: only text parts are supported"),
                            Some(&param),
                        )),
                    })
                    .collect::<Result<String, _>>()?,
                _ => return Err(ApiError::invalid(format!("{param}.content must be a string"), Some(&param))),
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role };
            messages.push(Message { role, content });
        }
        if self.response_format.as_ref().is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text")) {
            return Err(ApiError::invalid(
                "`response_format` other than text is not supported",
                Some("response_format"),
            ));
        }
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), k) => match k.unwrap_or(0) {
                k @ 0..=5 => Some(k as usize),
                k => {
                    return Err(ApiError::invalid(
                        format!("`top_logprobs` is {k}: it must be in 0..=5"),
                        Some("top_logprobs"),
                    ))
                }
            },
            (_, Some(_)) => {
                return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`", Some("top_logprobs")))
            }
            _ => None,
        };
        let (max, name) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let mut p = common(
            max,
            name,
            self.temperature,
            self.top_p,
            self.top_k,
            self.seed,
            self.stop,
            self.n,
            self.stream,
            self.stream_options,
            [(self.frequency_penalty, "frequency_penalty"), (self.presence_penalty, "presence_penalty")],
            self.repetition_penalty,
            &self.logit_bias,
            fresh_seed,
        )?;
        if p.n != 1 {
            return Err(ApiError::invalid(format!("`n` is {}: chat completions return one choice", p.n), Some("n")));
        }
        p.logprobs = logprobs;
        Ok((self.model, messages, p))
    }
}

/// The JSON error of a body that does not parse into the request type (serde's message names
/// the field and the position).
pub fn parse_error(e: serde_json::Error) -> ApiError {
    let msg = e.to_string();
    let param = msg.split('`').nth(1).filter(|_| msg.starts_with("unknown field")).map(str::to_string);
    match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid request: {msg}"), param.as_deref()),
        _ => ApiError::invalid(format!("the body is not valid JSON: {msg}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<(Option<String>, Prompt, GenParams), ApiError> {
        let (model, mut prompts, p) = serde_json::from_str::<CompletionRequest>(body).map_err(parse_error)?.check(7)?;
        Ok((model, prompts.remove(0), p))
    }

    #[test]
    fn completion_requests_are_checked_as_openai_does() {
        let (model, prompt, p) =
            completion(r#"{"model": "m", "prompt": "Hi", "temperature": 0, "stop": ["\n"]}"#).unwrap();
        assert_eq!(model.as_deref(), Some("m"));
        assert!(matches!(prompt, Prompt::Text(t) if t == "Hi"));
        assert_eq!(
            (p.max_tokens, p.sampling.temperature, p.stop_strings.clone(), p.stream),
            (Some(16), 0.0, vec!["\n".to_string()], false)
        );
        assert_eq!(p.sampling.seed, 7, "no seed: the fresh one");
        let (_, prompt, _) = completion(r#"{"model": "m", "prompt": [1, 15043]}"#).unwrap();
        assert!(matches!(prompt, Prompt::Tokens(t) if t == [1, 15043]));
        for (body, param) in [
            (r#"{"model": "m", "prompt": "x", "max_tokens": 0}"#, "max_tokens"),
            (r#"{"model": "m", "prompt": "x", "max_tokens": -3}"#, "max_tokens"),
            (r#"{"model": "m", "prompt": "x", "temperature": 3}"#, "temperature"),
            (r#"{"model": "m", "prompt": "x", "top_p": 0}"#, "top_p"),
            (r#"{"model": "m", "prompt": "x", "n": 200}"#, "n"),
            (r#"{"model": "m", "prompt": "x", "n": 0}"#, "n"),
            (r#"{"model": "m", "prompt": "x", "logprobs": 6}"#, "logprobs"),
            (r#"{"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}"#, "stop"),
            (r#"{"model": "m", "prompt": "x", "presence_penalty": 2.5}"#, "presence_penalty"),
            (r#"{"model": "m", "prompt": "x", "frequency_penalty": -3}"#, "frequency_penalty"),
            (r#"{"model": "m", "prompt": "x", "repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"model": "m", "prompt": "x", "frobnicate": 1}"#, "frobnicate"),
            (r#"{"model": "m", "prompt": []}"#, "prompt"),
            (r#"{"model": "m", "prompt": ["a", 1]}"#, "prompt"),
            (r#"{"model": "m", "prompt": "x", "echo": true, "stream": true}"#, "stream"),
            (r#"{"model": "m"}"#, "prompt"),
        ] {
            let e = completion(body).map(|_| ()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}: {e:?}");
        }
        let e = completion(r#"{"model": "m", "prompt": "x", "max_tokens": "ten"}"#).map(|_| ()).unwrap_err();
        assert!(e.status == 400 && e.message.contains("invalid type"), "{e:?}");
        let e = completion(r#"{"model": "m", "prompt": "#).map(|_| ()).unwrap_err();
        assert!(e.status == 400 && e.message.contains("not valid JSON"), "{e:?}");
    }

    #[test]
    fn chat_requests_are_checked() {
        let check = |b: &str| serde_json::from_str::<ChatRequest>(b).map_err(parse_error)?.check(1);
        let (_, m, p) = check(
            r#"{"model": "m", "messages": [{"role": "developer", "content": "Be kind."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 5, "logprobs": true, "top_logprobs": 2}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            [
                Message { role: "system".into(), content: "Be kind.".into() },
                Message { role: "user".into(), content: "Hi".into() }
            ]
        );
        assert_eq!((p.max_tokens, p.logprobs), (Some(5), Some(2)));
        assert_eq!(
            check(r#"{"model": "m", "messages": [{"role": "user", "content": "Hi"}]}"#).unwrap().2.max_tokens,
            None
        );
        for (body, param) in [
            (r#"{"model": "m", "messages": []}"#, "messages"),
            (r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#, "messages[0]"),
            (r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#, "messages[0]"),
            (r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, "top_logprobs"),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
        ] {
            let e = check(body).map(|_| ()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}: {e:?}");
        }
    }
}
