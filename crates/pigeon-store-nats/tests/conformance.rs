//! The `MailboxStore` conformance suite on NATS JetStream: each check on a fresh
//! `nats-server` child process (Debian's; the README's test command installs it).

use pigeon_store::Limits;
use pigeon_store_nats::{NatsOptions, NatsServer, NatsStore};

async fn open(limits: Limits) -> (NatsServer, NatsStore) {
    let server = NatsServer::start()
        .await
        .expect("nats-server runs (apt-get install nats-server)");
    let store = NatsStore::connect(&server.url, limits, NatsOptions::default())
        .await
        .expect("the store opens on the server");
    (server, store)
}

pigeon_store::mailbox_store_conformance!(open);
