//! A small WebDriver client for the browser tests: starts Debian's `chromedriver`, which
//! starts headless `chromium`, and speaks the W3C WebDriver protocol to it over plain HTTP
//! on loopback (one request per connection, JSON in and out; no async runtime, no crate
//! beyond what the tree has). The daemons' certificates come from their own CAs: Chromium
//! trusts exactly those (`--ignore-certificate-errors-spki-list` with each CA's SPKI
//! hash), nothing else.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::{free_port, read_response, scratch_dir, tool, Daemon};

/// The WebDriver element reference key (W3C).
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait for something on the page lasts: the machine is shared and slow.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Where the browser tests leave their screenshots: `target/console-screenshots/`
/// (under `CARGO_TARGET_DIR` when set). CI keeps the directory as an artifact.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

/// Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo: how Chromium names a
/// key it is told to trust.
pub fn spki_hash(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The full path of `program` as `PATH` finds it (chromedriver wants a path).
fn on_path(program: &std::ffi::OsStr) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program:?} is not on PATH"))
}

/// One headless Chromium, driven through its own chromedriver; both end with the value.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// A prefix for screenshot names (the test's name).
    name: String,
}

/// How to start a browser.
#[derive(Default)]
pub struct Launch {
    /// SPKI hashes of the CAs the browser trusts (see [`spki_hash`]).
    pub trust: Vec<String>,
    /// Extra Chromium switches (e.g. `--host-resolver-rules=...`).
    pub args: Vec<String>,
}

impl Launch {
    /// Trusts the CAs of `daemons`.
    pub fn trusting(daemons: &[&Daemon]) -> Launch {
        Launch {
            trust: daemons
                .iter()
                .map(|d| spki_hash(d.ca_der().as_ref()))
                .collect(),
            args: Vec::new(),
        }
    }
}

impl Browser {
    #[track_caller]
    pub fn start(name: &str, launch: Launch) -> Browser {
        let chromium = on_path(tool("chromium").get_program());
        let mut driver_cmd = tool("chromedriver");
        let port = free_port();
        let dir = scratch_dir(&format!("browser-{name}"));
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("driver log");
        let driver = driver_cmd
            .arg(format!("--port={port}"))
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            name: name.to_string(),
        };
        let deadline = Instant::now() + PATIENCE;
        while b.http("GET", "/status", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // As root Chromium needs --no-sandbox; the rest keeps it from calling home or
        // doing background work while a test runs.
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", dir.join("profile").display()));
        if !launch.trust.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                launch.trust.join(",")
            ));
        }
        args.extend(launch.args);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "timeouts": {"implicit": 0, "pageLoad": 60_000, "script": 30_000},
        }}});
        let answer = b.command("POST", "/session", Some(caps));
        b.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {answer}"))
            .to_string();
        b
    }

    /// One WebDriver HTTP exchange: the status and the JSON body.
    fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
        let bytes = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            bytes.len()
        );
        tcp.write_all(head.as_bytes())?;
        tcp.write_all(bytes.as_bytes())?;
        let r = read_response(&mut tcp, false)?;
        let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Ok((r.status, json))
    }

    /// A WebDriver command; its `value`. A WebDriver error fails the test.
    #[track_caller]
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method, path, body) {
            Ok(v) => v,
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }

    fn try_command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (status, json) = self
            .http(method, path, body.as_ref())
            .map_err(|e| format!("chromedriver: {e}"))?;
        let value = json.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("{status}: {value}"))
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    #[track_caller]
    pub fn goto(&self, url: &str) {
        self.command("POST", &self.path("/url"), Some(json!({ "url": url })));
    }

    /// Reloads the page (a `goto` to the same URL with a fragment would not).
    #[track_caller]
    pub fn reload(&self) {
        self.command("POST", &self.path("/refresh"), Some(json!({})));
    }

    /// The element `css` selects, once there is one.
    #[track_caller]
    pub fn wait(&self, css: &str) -> Element<'_> {
        self.wait_for(css, |_| true)
    }

    /// The first element `css` selects whose visible text passes `ok`, once there is one.
    #[track_caller]
    pub fn wait_for(&self, css: &str, ok: impl Fn(&str) -> bool) -> Element<'_> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .try_command(
                    "POST",
                    &self.path("/elements"),
                    Some(json!({"using": "css selector", "value": css})),
                )
                .unwrap_or(Value::Null);
            for e in found.as_array().into_iter().flatten() {
                if let Some(id) = e[ELEMENT].as_str() {
                    let el = Element {
                        browser: self,
                        id: id.to_string(),
                    };
                    if el.try_text().is_some_and(|t| ok(&t)) {
                        return el;
                    }
                }
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout");
                panic!(
                    "no element {css:?} as wanted within {PATIENCE:?}; page text:\n{}\n(screenshot {})",
                    self.page_text(),
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many elements `css` selects now.
    pub fn count(&self, css: &str) -> usize {
        self.script(
            "return document.querySelectorAll(arguments[0]).length",
            json!([css]),
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// Runs `body` (a function body; `arguments` are `args`) in the page; its result.
    #[track_caller]
    pub fn script(&self, body: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": body, "args": args})),
        )
    }

    /// The page's visible text.
    pub fn page_text(&self) -> String {
        self.try_command(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        )
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
    }

    /// Every cookie the browser holds for the page's site, `HttpOnly` ones included.
    #[track_caller]
    pub fn cookies(&self) -> Vec<Value> {
        self.command("GET", &self.path("/cookie"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the window as `<test>-<what>.png` in [`screenshot_dir`]; its path.
    pub fn screenshot(&self, what: &str) -> PathBuf {
        let dir = screenshot_dir();
        let path = dir.join(format!("{}-{what}.png", self.name));
        let png = self
            .try_command("GET", &self.path("/screenshot"), None)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
        if let Some(png) = png {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(&path, png);
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            if std::thread::panicking() {
                let shot = self.screenshot("failed");
                eprintln!(
                    "---- browser page at failure ({}) ----\n{}",
                    shot.display(),
                    self.page_text()
                );
                let state = self.try_command("POST", &self.path("/execute/sync"), Some(json!({"script": "return [document.readyState, performance.getEntriesByType('resource').map((e) => `${e.name} ${e.responseEnd}`)]", "args": []})));
                eprintln!("---- loading state ----\n{state:?}");
            }
            let _ = self.try_command("DELETE", &self.path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element on the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        self.browser.path(&format!("/element/{}{rest}", self.id))
    }

    fn try_text(&self) -> Option<String> {
        self.browser
            .try_command("GET", &self.path("/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
    }

    /// Its visible text.
    #[track_caller]
    pub fn text(&self) -> String {
        self.browser
            .command("GET", &self.path("/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[track_caller]
    pub fn click(&self) {
        self.browser
            .command("POST", &self.path("/click"), Some(json!({})));
    }

    /// Types `text` into it (after what is there).
    #[track_caller]
    pub fn send_keys(&self, text: &str) {
        self.browser
            .command("POST", &self.path("/value"), Some(json!({ "text": text })));
    }

    /// The value of its attribute `name`, if it has one.
    #[track_caller]
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.browser
            .command("GET", &self.path(&format!("/attribute/{name}")), None)
            .as_str()
            .map(String::from)
    }

    #[track_caller]
    pub fn enabled(&self) -> bool {
        self.browser
            .command("GET", &self.path("/enabled"), None)
            .as_bool()
            .unwrap_or(false)
    }
}
