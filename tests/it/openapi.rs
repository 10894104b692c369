//! Keeps `docs/openapi.yaml` in step with the router: every routed (method, path) is
//! documented, every documented one is routed, and each operation declares the access its
//! route has. The YAML is read with a small line-based reader (no YAML crate): under the
//! top-level `paths:` key, path keys sit at two spaces of indent and methods at four.

use std::collections::BTreeSet;

use replgate::api::{route_table, Access};

use crate::rng::{seed_from_env, Rng};

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
        // A change can meet a full disk under the data directory (issue 21): 507.
        let changes = matches!(r.method, "POST" | "PUT" | "DELETE");
        if changes
            && !op
                .block
                .contains("'507': {$ref: '#/components/responses/InsufficientStorage'}")
        {
            problems.push(format!("{name} changes state but does not document 507"));
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

/// The `pattern` of the component schema `name`, unquoted (YAML single quotes).
fn component_pattern(yaml: &str, name: &str) -> Option<String> {
    let start = yaml.find(&format!("\n    {name}:\n"))? + 1;
    yaml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("      ") || l.trim().is_empty())
        .find_map(|l| l.strip_prefix("      pattern: '"))
        .map(|p| {
            let p = p.trim_end();
            p.strip_suffix('\'').unwrap_or(p).replace("''", "'")
        })
}

/// The pattern a document gives a field, following a `$ref` to a component: `anchor` is
/// the text that starts the field's schema (its first eight lines are read).
fn field_pattern(yaml: &str, anchor: &str) -> Option<String> {
    let at = yaml.find(anchor)?;
    let block: String = yaml[at..].lines().take(8).collect::<Vec<_>>().join("\n");
    if let Some(r) = block.find("#/components/schemas/") {
        let name: String = block[r + 21..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        return component_pattern(yaml, &name);
    }
    let p = block.find("pattern: '")?;
    let rest = &block[p + 10..];
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            break;
        }
        out.push(c);
    }
    Some(out)
}

/// Which of `inputs` the JSON-schema `pattern` admits, as a contract tester reads it
/// (Python's `re.search`, what the `jsonschema` library and schemathesis use).
fn admitted(pattern: &str, inputs: &[String]) -> Vec<bool> {
    let script = "import json, re, sys\n\
                  d = json.load(sys.stdin)\n\
                  p = re.compile(d['pattern'])\n\
                  print(json.dumps([p.search(s) is not None for s in d['inputs']]))\n";
    let body = serde_json::json!({ "pattern": pattern, "inputs": inputs }).to_string();
    let out = crate::harness::run_with_input(
        crate::harness::tool("python3").arg("-c").arg(script),
        body.as_bytes(),
    );
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3's answer")
}

fn ipv4(rng: &mut Rng) -> String {
    let octet = |rng: &mut Rng| match rng.below(4) {
        0 => rng.below(10).to_string(),
        1 => (250 + rng.below(6)).to_string(),
        _ => rng.below(256).to_string(),
    };
    (0..4).map(|_| octet(rng)).collect::<Vec<_>>().join(".")
}

/// An IPv6 address in one of its text forms: compressed or not, groups with or without
/// leading zeros, either case, an IPv4 tail, an IPv4-mapped address now and then.
fn ipv6(rng: &mut Rng) -> String {
    let mut groups: Vec<u16> = (0..8)
        .map(|_| match rng.below(3) {
            0 => 0,
            1 => rng.below(16) as u16,
            _ => rng.next_u64() as u16,
        })
        .collect();
    if rng.below(4) == 0 {
        groups[..5].fill(0);
        groups[5] = 0xffff;
    }
    let group = |rng: &mut Rng, g: u16| {
        let s = match rng.below(3) {
            0 => format!("{g:04x}"),
            _ => format!("{g:x}"),
        };
        if rng.below(4) == 0 {
            s.to_uppercase()
        } else {
            s
        }
    };
    let tail_v4 = rng.below(4) == 0;
    let mut parts: Vec<String> = groups[..if tail_v4 { 6 } else { 8 }]
        .iter()
        .map(|&g| group(rng, g))
        .collect();
    if tail_v4 {
        parts.push(format!(
            "{}.{}.{}.{}",
            groups[6] >> 8,
            groups[6] & 0xff,
            groups[7] >> 8,
            groups[7] & 0xff
        ));
    }
    // "::" over a run of groups (any run, zero or not: the server must refuse a run
    // that is not all zeros only in value, which text cannot show, so keep zeros).
    if rng.below(3) > 0 {
        let n = parts.len();
        let start = rng.index(n);
        let len = 1 + rng.index(n - start);
        let zero = |p: &String| p.chars().all(|c| c == '0');
        if parts[start..start + len].iter().all(zero) || rng.below(5) == 0 {
            let left = parts[..start].join(":");
            let right = parts[start + len..].join(":");
            return format!("{left}::{right}");
        }
    }
    parts.join(":")
}

const NOISE: &[char] = &[
    '0', '1', '9', 'a', 'f', 'F', 'g', 'Z', ':', '.', '/', '%', '[', ']', '+', '-', ' ', '\n',
    '\t', '\u{a0}', '\u{3000}', '\u{85}', '\u{1c}', '\u{feff}', '_', 'é',
];

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..=rng.below(2) {
        let at = rng.index(chars.len() + 1);
        match rng.below(3) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 if at < chars.len() => chars[at] = *rng.pick(NOISE),
            _ => chars.insert(at, *rng.pick(NOISE)),
        }
    }
    chars.into_iter().collect()
}

fn network_inputs(rng: &mut Rng) -> Vec<String> {
    let mut out: Vec<String> = [
        "",
        "/",
        "::",
        ":::",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.1.1.1",
        "1.2.3.4/",
        "1.2.3.4/08",
        "1.2.3.4/33",
        "::/0",
        "::ffff:1.2.3.4/32",
        "::ffff:1.2.3.4/33",
        "0:0:0:0:0:ffff:0:0/96",
        "::ffff:0:0/96",
        "::1/128",
        "::1/129",
        "1::2::3",
        "1:2:3:4:5:6:7:8:9",
        "[::1]",
        "fe80::1%2",
        "1.2.3.4\n",
        "0.0.0.0/0",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4::5:6:7:8",
        "0::ffff:1.2.3.4/40",
        "::ffff::/40",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..6_000 {
        let addr = if rng.below(3) == 0 {
            ipv4(rng)
        } else {
            ipv6(rng)
        };
        let s = match rng.below(4) {
            0 => addr,
            1 => format!("{addr}/{}", rng.below(140)),
            2 => format!(
                "{addr}/{}",
                rng.pick(&["0", "00", "032", "08", "33", "129", "-1", ""])
            ),
            _ => format!("{addr}/{}", rng.below(33)),
        };
        let s = if rng.below(3) == 0 {
            mutate(rng, &s)
        } else {
            s
        };
        out.push(s);
    }
    out
}

fn host_port_inputs(rng: &mut Rng) -> Vec<String> {
    const HOST: &[u8] = b"abcxyzABC0123456789-.";
    const SPACE: &[char] = &[
        ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{3000}', '\u{2028}',
        '\u{1c}', '\u{feff}', '\u{180e}',
    ];
    let mut out: Vec<String> = [
        "",
        " ",
        "a",
        "-a",
        ".a",
        "a:0",
        "a:+80",
        "a:+",
        "a:080",
        "a:65535",
        "a:65536",
        "[::1]",
        "[::1]:80",
        "[::1]:0",
        "[::1]:+80",
        "[::1%2]:80",
        "[::1%eth0]:80",
        "::1",
        "1.2.3.4:0",
        "1.2.3.4:00080",
        "[1.2.3.4]:80",
        "a:b:c",
        "a::80",
        "[::1]:",
        "a:",
        ":80",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push("a".repeat(253));
    out.push("a".repeat(254));
    out.push(format!("{}:8443", "a".repeat(253)));
    out.push(format!("{}:08443", "a".repeat(253)));
    out.push(format!(" {}:8443 ", "a".repeat(253)));
    for _ in 0..6_000 {
        let core = match rng.below(5) {
            0 | 1 => {
                let longest = if rng.below(10) == 0 { 260 } else { 20 };
                let len = 1 + rng.index(longest);
                (0..len)
                    .map(|_| char::from(*rng.pick(HOST)))
                    .collect::<String>()
            }
            2 => ipv4(rng),
            3 => format!("[{}]", ipv6(rng)),
            _ => ipv6(rng),
        };
        let core = if core.starts_with('[') && rng.below(4) == 0 {
            format!(
                "{}%{}]",
                core.trim_end_matches(']'),
                rng.below(5_000_000_000)
            )
        } else {
            core
        };
        let port = match rng.below(6) {
            0 => String::new(),
            1 => format!(":{}", rng.below(70_000)),
            2 => format!(":0{}", rng.below(70_000)),
            3 => format!(":+{}", rng.below(70_000)),
            _ => format!(":{}", 1 + rng.below(65_535)),
        };
        let mut s = format!("{core}{port}");
        for _ in 0..rng.below(3) {
            s.insert(0, *rng.pick(SPACE));
            s.push(*rng.pick(SPACE));
        }
        if rng.below(4) == 0 {
            s = mutate(rng, &s);
        }
        out.push(s);
    }
    out
}

/// Compares what the document admits with what the server takes: every disagreement,
/// the first few shown.
fn disagreements(pattern: &str, inputs: &[String], server: impl Fn(&str) -> bool) -> Vec<String> {
    let doc = admitted(pattern, inputs);
    let taken = inputs.iter().filter(|s| server(s)).count();
    eprintln!("{} inputs, {taken} taken by the server", inputs.len());
    // Both answers must be common, or the comparison proves little.
    assert!(
        taken > inputs.len() / 5 && taken < inputs.len() * 4 / 5,
        "{taken} of {} inputs taken: the generator needs balance",
        inputs.len()
    );
    inputs
        .iter()
        .zip(doc)
        .filter(|(s, doc)| server(s) != *doc)
        .map(|(s, doc)| {
            let side = if doc {
                "the document admits"
            } else {
                "the server takes"
            };
            format!("{side} {s:?} and the other does not")
        })
        .collect()
}

/// The document is no looser (and no stricter) than the server where its fields are
/// addresses: `remote_addr` of the bulk ignore and the `host[:port]` of `target` and of a
/// token's `address`. A contract tester reads the patterns; a value one admits that the
/// server refuses is a "schema-valid request refused", one it refuses that the server
/// takes a "schema-violating request accepted". Compared on thousands of generated and
/// mutated values (seeded) against `model::Network::parse` and `parse_target`.
#[test]
fn address_patterns_admit_exactly_what_the_server_parses() {
    let mut rng = Rng::new(seed_from_env("REPLGATE_FUZZ_SEED", 0x0a9e_2a11_0000_0001));
    let network = field_pattern(SPEC, "- name: remote_addr")
        .expect("docs/openapi.yaml gives `remote_addr` a pattern");
    let bad = disagreements(&network, &network_inputs(&mut rng), |s| {
        replgate::model::Network::parse(s).is_some()
    });
    assert!(
        bad.is_empty(),
        "remote_addr: {} disagreements, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(8)].join("\n")
    );
    let inputs = host_port_inputs(&mut rng);
    for (field, anchor) in [
        ("target", "                target:\n"),
        ("address", "                address:\n"),
    ] {
        let pattern = field_pattern(SPEC, anchor)
            .unwrap_or_else(|| panic!("docs/openapi.yaml gives `{field}` no pattern"));
        // An empty `address` is none (its schema's other branch, `maxLength: 0`).
        let inputs: Vec<String> = inputs.iter().filter(|s| !s.is_empty()).cloned().collect();
        let bad = disagreements(&pattern, &inputs, |s| {
            replgate::pairing::source::parse_target(s).is_some()
        });
        assert!(
            bad.is_empty(),
            "{field}: {} disagreements, e.g.:\n{}",
            bad.len(),
            bad[..bad.len().min(8)].join("\n")
        );
    }
}

/// Lines where a plain (unquoted, not block) scalar holds `: `, which YAML does not allow
/// (schemathesis refused the whole document for one, late in CI; this checker's own
/// line reading does not care). A key's plain value and the lines that continue it (more
/// indented, not a list item) are checked.
fn plain_scalars_with_a_colon(yaml: &str) -> Vec<usize> {
    let mut bad = Vec::new();
    let mut plain_at: Option<usize> = None;
    let mut block_at: Option<usize> = None;
    for (i, line) in yaml.lines().enumerate() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        // Inside a block scalar (`key: |` or `>`) anything goes.
        if let Some(key_indent) = block_at {
            if indent > key_indent {
                continue;
            }
            block_at = None;
        }
        if let Some(key_indent) = plain_at {
            if indent > key_indent && !text.starts_with("- ") {
                if text.contains(": ") || text.ends_with(':') {
                    bad.push(i + 1);
                }
                continue;
            }
            plain_at = None;
        }
        let Some((key, value)) = text.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        let is_key =
            !key.is_empty() && !key.contains(' ') && !key.starts_with(['\'', '"', '{', '[']);
        let plain = !value.is_empty()
            && !value.starts_with(['|', '>', '\'', '"', '{', '[', '&', '*', '!', '#']);
        if is_key && value.starts_with(['|', '>']) {
            block_at = Some(indent);
        }
        if is_key && plain {
            if value.contains(": ") {
                bad.push(i + 1);
            }
            plain_at = Some(indent);
        }
    }
    bad
}

#[test]
fn openapi_plain_scalars_hold_no_colon_a_strict_yaml_parser_would_refuse() {
    assert_eq!(
        plain_scalars_with_a_colon(SPEC),
        Vec::<usize>::new(),
        "docs/openapi.yaml lines"
    );
    let broken = "a:\n  description: The features (of the request this\n    version has and agrees to: `chunks` only).\n  ok: |\n    a block: fine\n  x: 'quoted: fine'\n";
    assert_eq!(plain_scalars_with_a_colon(broken), vec![3]);
}
