//! The tunnel client's public address: a STUN Binding client ([`StunClient`]) on the client's own
//! QUIC socket, so the mapping it learns (and keeps alive) is the one the tunnel's datagrams get
//! from the NAT.
//!
//! Requests repeat at the QUIC keep-alive interval: they refresh the mapping towards the STUN
//! server and notice a NAT that rebinds. A failed transaction never touches the tunnel: it is
//! printed once (until an answer comes again) and the client tries again an interval later.
//!
//! Call order (from the client's flush, after any input): [`NatProbe::handle_datagram`] for each
//! STUN datagram the socket brought, then [`NatProbe::drive`], whose return value is the
//! deadline to fold into the core's wakeup.

use crate::stun::client::{StunClient, StunEvent, StunStats};
use longhaul::{Io, UdpId};
use std::net::SocketAddrV4;
use std::time::Duration;

pub struct NatProbe {
    client: StunClient,
    /// Answers seen when the last failure was printed: no new line until one more comes.
    failed_at: Option<u64>,
}

impl NatProbe {
    /// A probe of `server` repeating every `interval`.
    pub fn new(server: SocketAddrV4, interval: Duration) -> Self {
        NatProbe {
            client: StunClient::new(server, interval),
            failed_at: None,
        }
    }

    /// The public address and port the STUN server saw last.
    pub fn public(&self) -> Option<SocketAddrV4> {
        self.client.mapped()
    }

    pub fn stats(&self) -> StunStats {
        self.client.stats()
    }

    /// A STUN datagram from the shared socket (QUIC's demux already took it for STUN).
    pub fn handle_datagram(&mut self, now: Duration, data: &[u8]) {
        self.client.handle_datagram(now, data);
    }

    /// Sends the requests that are due on `udp`, prints what changed, and returns the client's
    /// next deadline.
    pub fn drive(&mut self, io: &mut Io, udp: UdpId) -> Option<Duration> {
        let now = io.now();
        while let Some((to, data)) = self.client.poll_transmit(now) {
            // A full socket loses this request; the retransmission schedule covers it.
            let _ = io.udp_send(udp, data, to);
        }
        while let Some(ev) = self.client.poll_event() {
            match ev {
                StunEvent::MappedAddressChanged { old: None, new } => {
                    println!("public address: {new}")
                }
                StunEvent::MappedAddressChanged {
                    old: Some(old),
                    new,
                } => println!("public address: {new} (changed from {old})"),
                StunEvent::TransactionFailed(f) => {
                    let answers = self.client.stats().responses;
                    // One line per run of failures: quiet until an answer came in between.
                    if self.failed_at != Some(answers) {
                        println!(
                            "tunnel client: STUN server {}: {f}; the tunnel goes on, STUN retries",
                            self.client.server(),
                        );
                        self.failed_at = Some(answers);
                    }
                }
            }
        }
        self.client.poll_timeout()
    }
}
