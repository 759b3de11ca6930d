//! `result`: a finished job's output on stdout (an `exec` job's captured
//! streams as the command wrote them), its error on stderr otherwise.

use std::io::Write;
use std::path::Path;

use jobvisor_proto::control::{JobState, Payload};
use jobvisor_proto::hex;
use jobvisor_proto::json::{payload_json, Text};
use serde_json::{json, Value};

use super::connect;
use super::wait::describe_unsuccessful;
use crate::exit::{exit_code_for_state, CmdResult, EXIT_ERROR, EXIT_OK};
use crate::output::{emit, emit_bytes, emit_json};

/// Prints job `id`'s result; the exit code is the job's.
pub async fn result(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let r = client.status(id).await?;
    if json {
        emit_json(&json!({
            "id": r.id,
            "state": r.state.as_str(),
            "output": r.output.as_ref().map_or(Value::Null, payload_json),
            "error": r.error,
        }))?;
    }
    match r.state {
        JobState::Succeeded => {
            if !json {
                match &r.output {
                    Some(Payload::Json(t)) => {
                        let parsed = serde_json::from_str::<Value>(t).ok();
                        if let Some((out, err, status)) = parsed.as_ref().and_then(exec_streams) {
                            // An `exec` job: its captured streams, as the command wrote them.
                            emit_bytes(&out)?;
                            let _ = std::io::stderr().write_all(&err);
                            eprintln!("jobvisor: job {id}: {status} (--json for the whole record)");
                            return Ok(EXIT_OK);
                        }
                        let text = match parsed {
                            Some(v) => {
                                serde_json::to_string_pretty(&v).unwrap_or_else(|_| t.clone())
                            }
                            None => t.clone(),
                        };
                        emit(&format!("{text}\n"))?;
                    }
                    Some(Payload::Native(b)) => {
                        eprintln!(
                            "jobvisor: job {id}'s output is in the native encoding ({} bytes); printing it as hex",
                            b.len()
                        );
                        emit(&format!("{}\n", hex(b)))?;
                    }
                    None => eprintln!("jobvisor: job {id} succeeded without an output"),
                }
            }
            Ok(EXIT_OK)
        }
        s if s.is_terminal() => {
            eprintln!("jobvisor: {}", describe_unsuccessful(&r));
            Ok(exit_code_for_state(s))
        }
        s => {
            if !json {
                eprintln!("jobvisor: job {id} is not finished (state {})", s.as_str());
            }
            Ok(EXIT_ERROR)
        }
    }
}

/// The captured streams and a status line of an `exec` output
/// (`{"stdout": "text", "stderr": {"base64": "..."}, "code": .., "signal": .., ...}`;
/// records written before the streams were text hold arrays of byte values).
fn exec_streams(v: &Value) -> Option<(Vec<u8>, Vec<u8>, String)> {
    let obj = v.as_object()?;
    let bytes = |k: &str| -> Option<Vec<u8>> {
        serde_json::from_value::<Text>(obj.get(k)?.clone())
            .ok()
            .map(|t| t.0)
    };
    let (out, err) = (bytes("stdout")?, bytes("stderr")?);
    let status = match (
        obj.get("code").and_then(Value::as_i64),
        obj.get("signal").and_then(Value::as_i64),
    ) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "no exit status".to_string(),
    };
    let cut = ["stdout_truncated", "stderr_truncated"]
        .iter()
        .filter(|k| obj.get(**k).and_then(Value::as_bool) == Some(true))
        .count();
    let status = if cut > 0 {
        format!("{status}, output truncated")
    } else {
        status
    };
    Some((out, err, status))
}
