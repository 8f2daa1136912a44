//! The lab's DNS resolver: answers A queries from a [`Zone`] on UDP and TCP.
//!
//! It plays the "national resolver" of rule 1 (blocked names get NXDOMAIN) and, with an honest
//! zone, a public resolver that the censor intercepts on UDP.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use super::{Query, Zone, answer};

/// Most concurrent TCP clients served.
const MAX_TCP: usize = 64;

/// Serves DNS on `udp` and `tcp` until `shutdown` changes to `true`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Arc<Zone>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 1500];
    let active = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            got = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                if let Ok(q) = Query::parse(&buf[..n]) {
                    // A lost answer is a lost UDP answer: the client retries.
                    let _ = udp.send_to(&answer(&q, &zone), peer).await;
                }
            }
            got = tcp.accept() => {
                let Ok((mut stream, _)) = got else { continue };
                let Ok(permit) = Arc::clone(&active).try_acquire_owned() else { continue };
                let zone = Arc::clone(&zone);
                tokio::spawn(async move {
                    let _permit = permit;
                    let served = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                        for _ in 0..16 {
                            let mut len = [0u8; 2];
                            stream.read_exact(&mut len).await?;
                            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            stream.read_exact(&mut msg).await?;
                            let Ok(q) = Query::parse(&msg) else { break };
                            let reply = answer(&q, &zone);
                            let n = u16::try_from(reply.len()).unwrap_or(0);
                            stream.write_all(&n.to_be_bytes()).await?;
                            stream.write_all(&reply).await?;
                        }
                        Ok::<_, std::io::Error>(())
                    });
                    let _ = served.await;
                });
            }
        }
    }
}
