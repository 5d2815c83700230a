//! Shared helpers for mneme's black-box tests: find the built binary and
//! components, start a real `mneme serve` on a free port, talk HTTP to it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn built(dir: &str, name: &str) -> PathBuf {
    let p = target_dir().join(dir).join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-components.sh (scripts/test.sh does it for you)",
        p.display()
    );
    p
}

/// An example component built by `scripts/build-components.sh`.
pub fn example(name: &str) -> PathBuf {
    built("components", name)
}

/// A test-only component built by `scripts/build-components.sh`.
pub fn test_component(name: &str) -> PathBuf {
    built("test-components", name)
}

/// A fresh directory holding copies of the given components.
pub fn components_dir(components: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for c in components {
        std::fs::copy(c, dir.path().join(c.file_name().unwrap())).unwrap();
    }
    dir
}

/// The same component with other bytes: a custom section appended (a new build of
/// the same code, as far as mneme can tell).
pub fn rebuilt(wasm: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"mneme-test-build";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// The `mneme` binary of this build.
pub fn mneme_bin() -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/mneme
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(format!("mneme{}", std::env::consts::EXE_SUFFIX));
    assert!(p.exists(), "{} is missing: build it with `cargo build -p mneme`", p.display());
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `mneme serve` process. Dropping it kills the process.
pub struct Server {
    child: Child,
    pub url: String,
    /// `127.0.0.1:port`, for raw TCP.
    pub addr: String,
    agent: ureq::Agent,
}

/// How long a deploy (PUT) may take: the server compiles the component first.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

/// An HTTP client that trusts `ca_pem` (PEM) when given.
pub fn agent(ca_pem: Option<&str>) -> ureq::Agent {
    let mut config =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60)));
    if let Some(pem) = ca_pem {
        let cert = ureq::tls::Certificate::from_pem(pem.as_bytes()).unwrap();
        let roots = ureq::tls::RootCerts::Specific(Arc::new(vec![cert]));
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    config.build().into()
}

impl Server {
    pub fn start(data: &Path, components: &Path, extra: &[&str]) -> Server {
        Server::start_with(data, components, extra, None)
    }

    /// With `--tls-cert`/`--tls-key` among `extra`: `ca_pem` is the certificate the
    /// client trusts, and the server is reached as `https://localhost:port`.
    pub fn start_with(data: &Path, components: &Path, extra: &[&str], ca_pem: Option<&str>) -> Server {
        Server::try_start_with(free_port(), data, components, extra, ca_pem, None, None, "/ready")
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`Server::start`], with the process's working directory set to `cwd`.
    pub fn start_in(data: &Path, components: &Path, extra: &[&str], cwd: Option<&Path>) -> Server {
        Server::try_start_with(free_port(), data, components, extra, None, None, cwd, "/ready")
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Start the process and return as soon as it listens (`/health`), without
    /// waiting for `/ready`.
    pub fn start_live(data: &Path, components: &Path, extra: &[&str]) -> Server {
        Server::try_start_with(free_port(), data, components, extra, None, None, None, "/health")
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`Server::start`], but a server that exits during start is an `Err`
    /// with its exit status and what it wrote (when `stderr` names a file to send
    /// its stdout and stderr to; else they are inherited).
    pub fn try_start(data: &Path, components: &Path, extra: &[&str], stderr: Option<&Path>) -> Result<Server, String> {
        Server::try_start_with(free_port(), data, components, extra, None, stderr, None, "/ready")
    }

    /// Like [`Server::try_start`], listening on `port` (known before the start, e.g.
    /// for `--advertise`).
    pub fn try_start_on(
        port: u16,
        data: &Path,
        components: &Path,
        extra: &[&str],
        stderr: Option<&Path>,
    ) -> Result<Server, String> {
        Server::try_start_with(port, data, components, extra, None, stderr, None, "/ready")
    }

    #[allow(clippy::too_many_arguments)]
    fn try_start_with(
        port: u16,
        data: &Path,
        components: &Path,
        extra: &[&str],
        ca_pem: Option<&str>,
        stderr: Option<&Path>,
        cwd: Option<&Path>,
        ready_path: &str,
    ) -> Result<Server, String> {
        // Logs (stdout) and errors (stderr) into one file, both appending.
        let (out, err) = match stderr {
            Some(p) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
                (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
            }
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let mut command = Command::new(mneme_bin());
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let child = command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--components")
            .arg(components)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "mneme=warn".into()))
            .env_remove("MNEME_ADMIN_TOKEN")
            .env_remove("MNEME_CLIENT_TOKEN")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start mneme");
        let url = match ca_pem {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let mut server = Server { child, url, addr: format!("127.0.0.1:{port}"), agent: agent(ca_pem) };
        server.wait_for(ready_path).map_err(|status| {
            let text = stderr.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
            format!("mneme exited during start: {status}\n{text}")
        })?;
        Ok(server)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until `path` answers 200 (`/health`: the server listens).
    pub fn wait_for(&mut self, path: &str) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if let Ok(r) = self.agent.get(format!("{}{path}", self.url)).call() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mneme did not answer 200 on {path}");
    }

    /// The address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.trim_start_matches("http://").parse().unwrap()
    }

    /// Whether the process is still running (false once it exited, for any reason).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().unwrap()
    }

    /// SIGTERM; the exit status if the process exits within `timeout`, else it is
    /// killed and `None` returned.
    pub fn terminate_within(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.request_with(method, path, body, None)
    }

    /// A request with `Authorization: Bearer <token>` when a token is given.
    pub fn request_with(&self, method: &str, path: &str, body: &[u8], token: Option<&str>) -> (u16, String) {
        let url = format!("{}{}", self.url, path);
        let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let resp = match (method, token.is_some()) {
            ("GET", false) => self.agent.get(&url).call(),
            ("GET", true) => self.agent.get(&url).header("authorization", &auth).call(),
            ("POST", false) => self.agent.post(&url).header("content-type", "application/json").send(body),
            ("POST", true) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", &auth)
                .send(body),
            // A PUT deploys a component, which the server compiles first: a 20 MB
            // Python component takes more than a minute on a loaded 2-core machine.
            ("PUT", false) => self.agent.put(&url).config().timeout_global(Some(DEPLOY_TIMEOUT)).build().send(body),
            ("PUT", true) => self
                .agent
                .put(&url)
                .config()
                .timeout_global(Some(DEPLOY_TIMEOUT))
                .build()
                .header("authorization", &auth)
                .send(body),
            (m, _) => panic!("method {m}"),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        (status, text)
    }

    /// POST a command; returns (status, body as JSON or Null when empty).
    pub fn send(&self, entity_type: &str, id: &str, command: &str) -> (u16, Value) {
        let (s, t) = self.request("POST", &format!("/v1/entities/{entity_type}/{id}"), command.as_bytes());
        (s, json(&t))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, t) = self.request("GET", path, b"");
        (s, json(&t))
    }

    /// Every event carrying `tag`, in offset order, paging `GET /v1/events`.
    pub fn tagged_events(&self, tag: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let (s, page) = self.get(&format!("/v1/events?tag={tag}&from={from}&limit=10000"));
            assert_eq!(s, 200, "{page}");
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                return out;
            }
            out.extend(events.iter().cloned());
            from = page["next_from"].as_u64().unwrap();
        }
    }

    /// The value of the metric named `name` (in full, e.g. `mneme_commands_total`).
    pub fn metric<T: std::str::FromStr>(&self, name: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let (status, text) = self.request("GET", "/metrics", b"");
        assert_eq!(status, 200, "{text}");
        metric(&text, name)
    }
}

/// The value of the metric named `name` in a `/metrics` text.
pub fn metric<T: std::str::FromStr>(text: &str, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"));
    value.trim().parse().unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `request` as is over a new TCP connection and read until the server closes
/// it (or `timeout`): the status (0 when there was no response) and the body.
pub fn raw_http(addr: &str, request: &[u8], timeout: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(timeout)).unwrap();
    tcp.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn json(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

// ---------------------------------------------------------------------------
// In-process engine, for tests that need to reach inside (failing journal,
// counting writes, small limits).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mneme::component::{sandbox::Runtime, Registry, SandboxLimits};
use mneme::journal::{
    Backend, Journal, JournalError, JournalOptions, JournalResult, OutboxEntry, ProjectionBatch, ProjectionOffset,
    Snapshot, StoredEvent, StoredTopicMessage, Timer, WriteBatch,
};
use mneme::{CommandError, Engine, EngineConfig, Outcome};

/// The real journal (the default backend), with a switch that makes its writes fail the way a full
/// or broken disk does (the write returns an error, nothing is stored), one that
/// fails only the writes of outbox done records (as if the process died right
/// before they were written), and a counter of durable writes.
pub struct SwitchableJournal {
    inner: Arc<dyn Journal>,
    pub fail_writes: AtomicBool,
    pub fail_done_writes: AtomicBool,
    pub writes: AtomicU64,
}

impl Journal for SwitchableJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        let fail_done = !batch.outbox.done.is_empty() && self.fail_done_writes.load(Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) || fail_done {
            return Err(JournalError::Storage("No space left on device (os error 28)".into()));
        }
        self.inner.write(batch)?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        self.inner.highest_seq_nr(pid)
    }
    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.inner.events(pid, from, limit)
    }
    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.inner.events_by_tag(tag, from, limit)
    }
    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>> {
        self.inner.load_snapshot(pid)
    }
    fn put_timer(&self, timer: &Timer) -> JournalResult<()> {
        self.inner.put_timer(timer)
    }
    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        self.inner.remove_timer(id)
    }
    fn timers(&self) -> JournalResult<Vec<Timer>> {
        self.inner.timers()
    }
    fn next_timer_id(&self) -> JournalResult<u64> {
        self.inner.next_timer_id()
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn outbox_pending(&self) -> JournalResult<Vec<OutboxEntry>> {
        self.inner.outbox_pending()
    }
    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool> {
        self.inner.is_applied(pid, key)
    }
    fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredTopicMessage>> {
        self.inner.topic_messages(topic, from, limit)
    }
    fn topic_head(&self, topic: &str) -> JournalResult<u64> {
        self.inner.topic_head(topic)
    }
    fn events_from(&self, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.inner.events_from(from, limit)
    }
    fn health(&self) -> Result<(), String> {
        self.inner.health()
    }
    fn write_projection(&self, batch: &ProjectionBatch) -> JournalResult<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(JournalError::Storage("No space left on device (os error 28)".into()));
        }
        self.inner.write_projection(batch)
    }
    fn projection_offsets(&self, projection: &str) -> JournalResult<Vec<ProjectionOffset>> {
        self.inner.projection_offsets(projection)
    }
    fn view_get(&self, projection: &str, generation: u32, key: &str) -> JournalResult<Option<Vec<u8>>> {
        self.inner.view_get(projection, generation, key)
    }
    fn view_scan(
        &self,
        projection: &str,
        generation: u32,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> JournalResult<Vec<(String, Vec<u8>)>> {
        self.inner.view_scan(projection, generation, prefix, from_key, limit)
    }
}

/// The journal in-process tests run on: the default backend, or the one named by
/// `MNEME_TEST_JOURNAL` (`log`, `sled` or `postgres`; PostgreSQL: a database of its
/// own per data directory on the server of `MNEME_TEST_POSTGRES_URL`, e.g. from
/// `scripts/start-postgres.sh`).
pub fn test_journal(data: &Path) -> JournalOptions {
    let backend = match std::env::var("MNEME_TEST_JOURNAL") {
        Ok(name) if !name.is_empty() => Backend::parse(&name).unwrap_or_else(|e| panic!("MNEME_TEST_JOURNAL: {e}")),
        _ => Backend::default(),
    };
    let postgres_url = (backend == Backend::Postgres).then(|| mneme::journal::postgres::testing::database_for(data));
    JournalOptions { backend, postgres_url, ..JournalOptions::default() }
}

/// The `mneme serve` arguments that select the journal of `MNEME_TEST_JOURNAL` for
/// the data directory `data` (none for the default; for `postgres`, a database of
/// its own on the server of `MNEME_TEST_POSTGRES_URL`).
pub fn serve_journal_args(data: &Path) -> Vec<String> {
    let options = test_journal(data);
    if std::env::var("MNEME_TEST_JOURNAL").map_or(true, |n| n.is_empty()) {
        return Vec::new();
    }
    let mut args = vec!["--journal".to_string(), options.backend.name().to_string()];
    if let Some(url) = options.postgres_url {
        args.extend(["--postgres-url".to_string(), url]);
    }
    args
}

/// An engine over a data directory with the given components deployed under their names.
pub struct TestEngine {
    pub engine: Engine,
    pub journal: Arc<SwitchableJournal>,
}

impl TestEngine {
    pub fn start(
        data: &Path,
        components: &[(&str, PathBuf)],
        config: EngineConfig,
        limits: SandboxLimits,
    ) -> TestEngine {
        let journal = Arc::new(SwitchableJournal {
            inner: mneme::journal::open_with(data, &test_journal(data)).unwrap(),
            fail_writes: AtomicBool::new(false),
            fail_done_writes: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        });
        let registry = Arc::new(Registry::open(Runtime::new(limits).unwrap(), data).unwrap());
        for (name, path) in components {
            registry.deploy(name, &std::fs::read(path).unwrap()).unwrap();
        }
        let engine = Engine::start(config, journal.clone(), registry);
        TestEngine { engine, journal }
    }

    /// Send a JSON command and wait for its outcome.
    pub fn send(&self, entity_type: &str, id: &str, command: &str) -> Result<Outcome, CommandError> {
        self.engine.send_blocking(entity_type, id, command.as_bytes().to_vec())
    }

    /// Send a command that must succeed with a JSON reply.
    pub fn ok(&self, entity_type: &str, id: &str, command: &str) -> Value {
        match self.send(entity_type, id, command) {
            Ok(Outcome::Reply(b)) => serde_json::from_slice(&b).unwrap(),
            other => panic!("{command} -> {other:?}"),
        }
    }

    /// The entity's durable state as JSON, and its sequence number.
    pub fn state(&self, entity_type: &str, id: &str) -> (u64, Value) {
        let s = self.engine.state_blocking(entity_type, id).unwrap();
        (s.seq_nr, serde_json::from_slice(&s.state).unwrap())
    }

    pub fn events(&self, entity_type: &str, id: &str) -> Vec<StoredEvent> {
        self.journal.events(&format!("{entity_type}|{id}"), 1, usize::MAX).unwrap()
    }

    /// Messages published to `topic` (as JSON), from the journal.
    pub fn published(&self, topic: &str) -> Vec<Value> {
        let page = self.engine.topic_messages(topic, 1, usize::MAX).unwrap();
        page.messages.into_iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect()
    }

    pub fn stop(self) {
        self.engine.shutdown();
    }
}

/// A component built by `scripts/build-polyglot.sh` (Python, JavaScript, C).
pub fn polyglot(name: &str) -> PathBuf {
    built("components-polyglot", name)
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over a TcpStream: the crash suite needs a client that never
// resends a request (so "no answer" really means "unknown outcome"), and the
// HTTP fuzzer needs to write bytes no HTTP library would produce.

pub mod raw_http {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// A parsed response.
    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        /// Header names in lower case, values as sent.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
        pub fn body_text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Why no complete response was read.
    #[derive(Debug)]
    pub enum ReadError {
        /// The peer closed the connection before sending a single byte of a response.
        Closed,
        /// The connection broke (reset, timeout, EOF) in the middle of a response.
        Broken(io::Error),
        /// Bytes arrived that are not an HTTP/1.1 response.
        Garbage(String),
    }

    impl std::fmt::Display for ReadError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                ReadError::Closed => write!(f, "connection closed without a response"),
                ReadError::Broken(e) => write!(f, "connection broke: {e}"),
                ReadError::Garbage(s) => write!(f, "not an HTTP response: {s}"),
            }
        }
    }

    /// Reads responses from a stream, keeping bytes that belong to the next one.
    pub struct Reader {
        buf: Vec<u8>,
    }

    impl Default for Reader {
        fn default() -> Self {
            Reader { buf: Vec::with_capacity(4096) }
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    impl Reader {
        /// Fill the buffer; `Ok(false)` on EOF.
        fn fill(&mut self, s: &mut TcpStream) -> io::Result<bool> {
            let mut chunk = [0u8; 16384];
            let n = s.read(&mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
            Ok(n > 0)
        }

        fn need(&mut self, s: &mut TcpStream, n: usize) -> Result<(), ReadError> {
            while self.buf.len() < n {
                match self.fill(s) {
                    Ok(true) => {}
                    Ok(false) => return Err(ReadError::Broken(io::ErrorKind::UnexpectedEof.into())),
                    Err(e) => return Err(ReadError::Broken(e)),
                }
            }
            Ok(())
        }

        /// Read one final response (interim 1xx responses are skipped). `head` says
        /// the request was HEAD (no body follows).
        pub fn read(&mut self, s: &mut TcpStream, head: bool) -> Result<Response, ReadError> {
            loop {
                let r = self.read_one(s, head)?;
                if !(100..200).contains(&r.status) || r.status == 101 {
                    return Ok(r);
                }
            }
        }

        fn read_one(&mut self, s: &mut TcpStream, head: bool) -> Result<Response, ReadError> {
            let header_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                if self.buf.len() > 1 << 20 {
                    return Err(ReadError::Garbage("response head over 1 MiB".into()));
                }
                match self.fill(s) {
                    Ok(true) => {}
                    Ok(false) if self.buf.is_empty() => return Err(ReadError::Closed),
                    Ok(false) => return Err(ReadError::Broken(io::ErrorKind::UnexpectedEof.into())),
                    Err(e) if self.buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(ReadError::Closed)
                    }
                    Err(e) => return Err(ReadError::Broken(e)),
                }
            };
            let head_text = String::from_utf8_lossy(&self.buf[..header_end]).into_owned();
            self.buf.drain(..header_end + 4);
            let mut lines = head_text.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let mut parts = status_line.splitn(3, ' ');
            let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if !version.starts_with("HTTP/1.") {
                return Err(ReadError::Garbage(status_line.to_string()));
            }
            let status: u16 = code.parse().map_err(|_| ReadError::Garbage(status_line.to_string()))?;
            let mut headers = Vec::new();
            for line in lines {
                let (n, v) = line.split_once(':').ok_or_else(|| ReadError::Garbage(format!("header line {line:?}")))?;
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            let body = if head || status == 204 || status == 304 || (100..200).contains(&status) {
                Vec::new()
            } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
                let mut body = Vec::new();
                loop {
                    let line_end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        let len = self.buf.len();
                        self.need(s, len + 1)?;
                    };
                    let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                    let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                        .map_err(|_| ReadError::Garbage(format!("chunk size {size_text:?}")))?;
                    self.buf.drain(..line_end + 2);
                    self.need(s, size + 2)?;
                    body.extend_from_slice(&self.buf[..size]);
                    self.buf.drain(..size + 2);
                    if size == 0 {
                        break;
                    }
                }
                body
            } else if let Some(len) = get("content-length") {
                let len: usize = len.parse().map_err(|_| ReadError::Garbage(format!("content-length {len:?}")))?;
                self.need(s, len)?;
                self.buf.drain(..len).collect()
            } else {
                // Delimited by the end of the connection.
                loop {
                    match self.fill(s) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => return Err(ReadError::Broken(e)),
                    }
                }
                std::mem::take(&mut self.buf)
            };
            Ok(Response { status, headers, body })
        }
    }

    /// A keep-alive connection that sends each request exactly once.
    pub struct Conn {
        stream: TcpStream,
        reader: Reader,
    }

    impl Conn {
        pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Ok(Conn { stream, reader: Reader::default() })
        }

        pub fn stream(&mut self) -> &mut TcpStream {
            &mut self.stream
        }

        /// Write raw bytes, then read one response.
        pub fn exchange(&mut self, request: &[u8], head: bool) -> Result<Response, ReadError> {
            self.stream.write_all(request).map_err(ReadError::Broken)?;
            self.reader.read(&mut self.stream, head)
        }

        /// A well-formed request with a body. An error means no complete response
        /// arrived: the request may or may not have been received and handled.
        pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response, String> {
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body);
            self.exchange(&req, method == "HEAD").map_err(|e| e.to_string())
        }
    }
}
