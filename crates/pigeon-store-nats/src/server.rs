//! A `nats-server` child process on loopback, for tests and benchmarks: Debian's `nats-server`
//! with JetStream and file storage in a directory of its own, killed and waited for on drop.
//!
//! [`NatsServer::start`] runs one server; [`NatsServer::cluster`] runs several that form one
//! JetStream cluster (routes on loopback), so that streams can have replicas.

use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;

/// How long a server may take to accept clients.
const STARTUP: Duration = Duration::from_secs(20);
/// How long a new cluster may take to elect the leaders that let it make a replicated stream.
const CLUSTER_READY: Duration = Duration::from_secs(60);

/// One running `nats-server`.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// The client port.
    pub port: u16,
    /// What `nats-server --version` printed.
    pub version: String,
    /// Whether `sync_interval: always` (an fsync before every acknowledgement) is in force; false
    /// on servers before 2.10, which do not know the setting.
    pub sync_always: bool,
    conf: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    // Removed after the child is gone (fields drop after `Drop::drop`).
    _temp: Option<TempDir>,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl NatsServer {
    /// Starts one server with JetStream in a new temporary directory.
    ///
    /// # Errors
    /// `nats-server` is missing, or did not accept clients within 20 s (its log is in the error).
    pub async fn start() -> io::Result<Self> {
        let dir = temp_dir()?;
        let port = free_port()?;
        let mut server = Self::configure(&dir, "n0", port, None)?;
        server._temp = Some(TempDir(dir));
        server.run().await?;
        Ok(server)
    }

    /// Starts `nodes` servers in one JetStream cluster, each in its own directory under a new
    /// temporary one, and returns once the cluster makes streams with a replica on each.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn cluster(nodes: usize) -> io::Result<Vec<Self>> {
        let root = temp_dir()?;
        let ports: Vec<(u16, u16)> = (0..nodes)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<io::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut servers = Vec::with_capacity(nodes);
        for (i, &(port, route)) in ports.iter().enumerate() {
            let dir = root.join(format!("n{i}"));
            std::fs::create_dir_all(&dir)?;
            let cluster = ClusterConf {
                port: route,
                routes: &routes,
            };
            servers.push(Self::configure(
                &dir,
                &format!("n{i}"),
                port,
                Some(&cluster),
            )?);
        }
        for s in &mut servers {
            s.spawn()?;
        }
        for s in &mut servers {
            s.wait_ready().await?;
        }
        if let Some(first) = servers.first_mut() {
            first._temp = Some(TempDir(root));
            wait_for_jetstream(&first.url, nodes).await?;
        }
        Ok(servers)
    }

    fn configure(
        dir: &Path,
        name: &str,
        port: u16,
        cluster: Option<&ClusterConf<'_>>,
    ) -> io::Result<Self> {
        let version = Command::new("nats-server")
            .arg("--version")
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run nats-server (apt-get install nats-server): {e}"),
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let store = dir.join("js");
        std::fs::create_dir_all(&store)?;
        let conf = dir.join("nats.conf");
        let sync_always = write_config(&conf, name, port, &store, cluster, true)?;
        if !sync_always {
            write_config(&conf, name, port, &store, cluster, false)?;
        }
        Ok(Self {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            version,
            sync_always,
            log: dir.join("nats.log"),
            conf,
            dir: dir.to_owned(),
            _temp: None,
        })
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn run(&mut self) -> io::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again with the same configuration and store after [`NatsServer::kill`].
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.run().await
    }

    /// The server's directory (configuration, log, JetStream store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the server sends its `INFO` greeting on the client port.
    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "nats-server exited with {status}: {}",
                    self.log_tail()
                )));
            }
            if let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
            )
            .await
            {
                let mut buf = [0u8; 4];
                let read = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf));
                if matches!(read.await, Ok(Ok(_))) && &buf == b"INFO" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "nats-server did not accept clients within {STARTUP:?}: {}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last part of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let len = f.metadata().map_or(0, |m| m.len());
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct ClusterConf<'a> {
    port: u16,
    routes: &'a [String],
}

/// Waits until the cluster at `url` takes a stream with `replicas` replicas (its JetStream
/// leaders are elected), by making a small stream in memory and removing it again.
async fn wait_for_jetstream(url: &str, replicas: usize) -> io::Result<()> {
    use async_nats::jetstream::{self, stream};
    const PROBE: &str = "PIGEON_CLUSTER_READY";
    let deadline = Instant::now() + CLUSTER_READY;
    loop {
        let attempt = async {
            let client = async_nats::connect(url).await.map_err(io::Error::other)?;
            let js = jetstream::new(client);
            js.create_stream(stream::Config {
                name: PROBE.to_owned(),
                subjects: vec!["pigeon-cluster-ready".to_owned()],
                storage: stream::StorageType::Memory,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
            js.delete_stream(PROBE)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            Ok::<(), io::Error>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::other(format!(
                    "the cluster made no replicated stream within {CLUSTER_READY:?}: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn temp_dir() -> io::Result<PathBuf> {
    let mut name = [0u8; 8];
    getrandom::fill(&mut name).map_err(|e| io::Error::other(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!("pigeon-nats-{}", crate::codec::hex(&name)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the server config; with `sync_always`, first checks with `nats-server -t` that this
/// server knows `sync_interval` and returns whether the written config has it.
fn write_config(
    conf: &Path,
    name: &str,
    port: u16,
    store: &Path,
    cluster: Option<&ClusterConf<'_>>,
    sync_always: bool,
) -> io::Result<bool> {
    let sync = if sync_always {
        "  sync_interval: always\n"
    } else {
        ""
    };
    let mut text = format!(
        "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 1048576\njetstream {{\n  store_dir: {store:?}\n{sync}}}\n",
        store = store.display().to_string(),
    );
    if let Some(c) = cluster {
        let routes = c
            .routes
            .iter()
            .map(|r| format!("    {r:?}\n"))
            .collect::<String>();
        text.push_str(&format!(
            "cluster {{\n  name: pigeon\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{routes}  ]\n}}\n",
            c.port
        ));
    }
    std::fs::write(conf, text)?;
    if !sync_always {
        return Ok(false);
    }
    let status = Command::new("nats-server")
        .arg("-t")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(status.success())
}
