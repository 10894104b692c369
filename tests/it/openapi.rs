//! Keeps `docs/openapi.yaml` in step with the router: every routed (method, path) is
//! documented, every documented one is routed, and each operation declares the access its
//! route has. The YAML is read with a small line-based reader (no YAML crate): under the
//! top-level `paths:` key, path keys sit at two spaces of indent and methods at four.

use std::collections::BTreeSet;

use replgate::api::{route_table, Access};

const SPEC: &str = include_str!("../../docs/openapi.yaml");
const METHODS: &[&str] = &["get", "put", "post", "delete", "head", "patch", "options"];

/// `{request_id}` and `{id}` are the same route: parameter names do not matter.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn unquote(s: &str) -> &str {
    s.trim()
        .trim_start_matches(['\'', '"'])
        .trim_end_matches(['\'', '"'])
}

/// One documented operation: method (upper case), normalized path, and the lines of its
/// block.
struct Operation {
    method: String,
    path: String,
    block: String,
}

fn operations(yaml: &str) -> Vec<Operation> {
    let mut out: Vec<Operation> = Vec::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    let mut open = false;
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_paths = line.trim_end() == "paths:";
            path = None;
            open = false;
            continue;
        }
        if !in_paths {
            continue;
        }
        let bare_key = line.trim().strip_suffix(':').map(unquote);
        match (indent, bare_key) {
            (2, Some(key)) => {
                path = Some(normalize(key));
                open = false;
            }
            (4, Some(key)) if METHODS.contains(&key) => {
                let Some(p) = &path else { continue };
                out.push(Operation {
                    method: key.to_ascii_uppercase(),
                    path: p.clone(),
                    block: String::new(),
                });
                open = true;
            }
            (0..=4, _) => open = false,
            _ if open => {
                if let Some(op) = out.last_mut() {
                    op.block.push_str(line.trim());
                    op.block.push('\n');
                }
            }
            _ => {}
        }
    }
    out
}

/// Differences between what is routed and what is documented. `HEAD` may be documented
/// wherever `GET` is routed: the router answers HEAD like GET on every path.
fn mismatches(
    routed: &BTreeSet<(String, String)>,
    documented: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (m, p) in routed {
        if !documented.contains(&(m.clone(), p.clone())) {
            out.push(format!(
                "{m} {p} is routed but not documented in docs/openapi.yaml"
            ));
        }
    }
    for (m, p) in documented {
        let routed_as = if m == "HEAD" { "GET" } else { m.as_str() };
        if !routed.contains(&(routed_as.to_string(), p.clone())) {
            out.push(format!("{m} {p} is documented but not routed"));
        }
    }
    out
}

/// Every routed operation: the API listener's and the tunnel server's.
fn routed() -> BTreeSet<(String, String)> {
    let api = route_table()
        .into_iter()
        .map(|r| (r.method.to_string(), normalize(r.path)));
    let tunnel = replgate::tunnel::routes::table()
        .into_iter()
        .map(|r| (r.method.to_string(), normalize(r.path)));
    api.chain(tunnel).collect()
}

#[test]
fn openapi_documents_exactly_the_routed_endpoints() {
    let ops = operations(SPEC);
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|o| (o.method.clone(), o.path.clone()))
        .collect();
    assert_eq!(
        documented.len(),
        ops.len(),
        "an operation is documented twice"
    );
    let problems = mismatches(&routed(), &documented);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn openapi_operations_declare_their_access_and_errors() {
    let ops = operations(SPEC);
    let mut problems = Vec::new();
    for r in route_table() {
        let path = normalize(r.path);
        let Some(op) = ops.iter().find(|o| o.method == r.method && o.path == path) else {
            continue; // reported by the test above
        };
        let name = format!("{} {}", r.method, r.path);
        let anonymous = op.block.contains("security: []");
        match r.access {
            Access::Token(_) => {
                if anonymous {
                    problems.push(format!("{name} needs an AuthToken but says `security: []`"));
                }
                for status in ["'401'", "'403'"] {
                    if !op.block.contains(status) {
                        problems.push(format!("{name} does not document {status}"));
                    }
                }
            }
            Access::Public | Access::Console => {
                if !anonymous {
                    problems.push(format!(
                        "{name} takes no AuthToken but does not say `security: []`"
                    ));
                }
            }
        }
        let takes_body = matches!(r.method, "POST" | "PUT") && r.path != "/api/logout";
        if takes_body != op.block.contains("requestBody:") {
            problems.push(format!(
                "{name}: requestBody documented {}, expected {takes_body}",
                !takes_body
            ));
        }
        if !op.block.contains("responses:") {
            problems.push(format!("{name} documents no responses"));
        }
        // The front's own refusals can answer any request (SPEC 3, docs: info).
        for status in [
            "'400'", "'403'", "'408'", "'411'", "'413'", "'417'", "'431'", "'503'",
        ] {
            if !op.block.contains(status) {
                problems.push(format!("{name} does not document the front's {status}"));
            }
        }
        // Every /api read takes the `sid` filter unless its `sid` names its system.
        let filters_sid = r.method == "GET" && r.path.starts_with("/api/") && !r.names_sid;
        if filters_sid && !op.block.contains("#/components/parameters/SidFilter") {
            problems.push(format!(
                "{name} does not document the `sid` filter (SidFilter)"
            ));
        }
    }
    // Tunnel routes take no AuthToken: the mutual-TLS handshake is their authentication.
    for r in replgate::tunnel::routes::table() {
        let path = normalize(r.path);
        let Some(op) = ops.iter().find(|o| o.method == r.method && o.path == path) else {
            continue; // reported by the test above
        };
        if !op.block.contains("security: []") {
            problems.push(format!(
                "{} {} is a tunnel route but does not say `security: []`",
                r.method, r.path
            ));
        }
    }
    // The untrusted-peer answer carries the application code and the fingerprint.
    let untrusted = SPEC.split("    Untrusted:").nth(1).unwrap_or("");
    assert!(untrusted.contains("12505") && untrusted.contains("fingerprint"));
    assert!(SPEC.contains("name: AuthToken") && SPEC.contains("in: header"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_reports_an_undocumented_route_and_an_unrouted_document() {
    let mut r = routed();
    let documented: BTreeSet<_> = operations(SPEC)
        .iter()
        .map(|o| (o.method.clone(), o.path.clone()))
        .collect();
    r.insert(("POST".into(), normalize("/api/replication/new/{id}")));
    let problems = mismatches(&r, &documented);
    assert_eq!(
        problems,
        vec!["POST /api/replication/new/{} is routed but not documented in docs/openapi.yaml"]
    );
    let mut d = documented.clone();
    d.insert(("DELETE".into(), "/api/health".into()));
    assert_eq!(
        mismatches(&routed(), &d),
        vec!["DELETE /api/health is documented but not routed"]
    );
    // The reader sees through quoting and parameter names.
    let yaml = "paths:\n  '/a/{x}':\n    get:\n      responses: {}\n  /b:\n    parameters: []\n    post:\n      x: 1\ncomponents:\n  /c:\n    get: {}\n";
    let ops: Vec<(String, String)> = operations(yaml)
        .into_iter()
        .map(|o| (o.method, o.path))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("GET".to_string(), "/a/{}".to_string()),
            ("POST".to_string(), "/b".to_string())
        ]
    );
}
