//! One table of ranges, units and defaults: every number kcpgate takes gets the
//! same verdict and the same words from each way of setting it (a flag, kcptun's
//! JSON file, kcpgate's `-config` file, a `KCPGATE_*` environment variable,
//! `PATCH /api/v1/config`), at
//! each edge of its range and one step outside. One test in its own process: it
//! sets environment variables, which every parse in the process would read.

mod support;

use kcpgate::config::{env_var, number_spec, numeric_flags, Role, Settings};
use serde_json::Value;

/// A verdict: accepted, or the message of the refusal.
type Verdict = Result<(), String>;

fn by_flag(role: Role, name: &str, value: i64) -> Verdict {
    Settings::parse(role, [format!("-{name}"), value.to_string()]).map(drop).map_err(|e| e.to_string())
}

fn by_json(role: Role, key: &str, value: i64) -> Verdict {
    let mut settings = Settings::parse(role, Vec::<String>::new()).expect("defaults parse");
    settings.apply_json(&format!("{{\"{key}\": {value}}}")).map(drop).map_err(|e| e.to_string())
}

/// A `-config` file (servers only): a listener's setting in its `[[listener]]`
/// table, a process setting at the top.
fn by_file(name: &str, value: i64) -> Verdict {
    let listener = "[[listener]]\nlisten = \":29900\"\n";
    let text = match kcpgate::config_file::LISTENER_KEYS.contains(&name) {
        true => format!("{listener}{name} = {value}\n"),
        false => format!("{name} = {value}\n{listener}"),
    };
    let base = Settings::parse(Role::Server, Vec::<String>::new()).expect("defaults parse");
    kcpgate::config_file::parse("kcpgate.toml", &text, &base).map(drop).map_err(|e| e.to_string())
}

fn by_env(role: Role, name: &str, value: i64) -> Verdict {
    std::env::set_var(env_var(name), value.to_string());
    let verdict = Settings::parse(role, Vec::<String>::new()).map(drop).map_err(|e| e.to_string());
    std::env::remove_var(env_var(name));
    verdict
}

/// `PATCH /api/v1/config` of a running server at `admin`, for the tunables.
fn by_patch(admin: u16, field: &str, value: i64) -> Verdict {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .patch(format!("http://127.0.0.1:{admin}/api/v1/config"))
        .header("Content-Type", "application/json")
        .send(format!("{{\"{field}\": {value}}}"))
        .expect("the admin API answers");
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    match status {
        200 => Ok(()),
        422 => Err(body["errors"][0]["message"].as_str().unwrap_or_default().to_string()),
        other => panic!("PATCH {field}={value}: {other} {body}"),
    }
}

#[test]
fn every_number_gets_the_same_verdict_and_words_from_every_source() {
    let admin = support::free_tcp_port();
    let udp = support::free_udp_port("127.0.0.1");
    let server = support::Procs(vec![support::kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:9 -admin 127.0.0.1:{admin} -key settings-table"
    ))]);
    support::wait_ready(admin);
    let patchable = kcpgate::control::TunablesPatch::NUMBERS.map(|(_, table)| table);
    let mut checked = 0;
    for role in [Role::Server, Role::Client] {
        for (name, json_key) in numeric_flags(role) {
            let spec = number_spec(name).expect("every numeric flag is in the table");
            let mut values = vec![spec.min, spec.max, spec.max.saturating_add(1)];
            values.extend(spec.min.checked_sub(1));
            for value in values {
                // The table's own verdict, in its own words.
                let expected: Verdict = spec.check(value).map(drop).map_err(|e| e.to_string());
                let mut sources = vec![
                    ("flag", by_flag(role, name, value)),
                    ("JSON", by_json(role, json_key, value)),
                    ("environment", by_env(role, name, value)),
                ];
                if role == Role::Server {
                    sources.push(("config file", by_file(name, value)));
                }
                if role == Role::Server && patchable.contains(&name) {
                    sources.push(("PATCH", by_patch(admin, &name.replace('-', "_"), value)));
                }
                for (source, verdict) in sources {
                    match (&expected, &verdict) {
                        (Ok(()), Ok(())) => {}
                        (Err(words), Err(said)) => {
                            assert!(
                                said.contains(words.as_str()),
                                "{name}={value} by {source}: {said:?} lacks {words:?}"
                            )
                        }
                        _ => panic!("{name}={value} by {source}: {verdict:?}, the table says {expected:?}"),
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 250, "{checked} verdicts");
    println!("{checked} verdicts agree");
    drop(server);
}

#[test]
fn the_api_document_gives_each_tunable_the_tables_range() {
    let document: Value = serde_json::from_str(&kcpgate::admin::openapi_json()).expect("JSON");
    let patch = &document["components"]["schemas"]["TunablesPatch"]["properties"];
    let fields = patch.as_object().expect("TunablesPatch has properties");
    for (field, schema) in fields.iter().filter(|(field, _)| *field != "mode") {
        let spec = number_spec(&field.replace('_', "-")).unwrap_or_else(|| panic!("{field} is in the table"));
        let range = (schema["minimum"].as_i64(), schema["maximum"].as_i64());
        assert_eq!(range, (Some(spec.min), Some(spec.max)), "{field}: {schema}");
    }
    assert_eq!(fields.len(), 9, "mode and eight numbers");
}
