//! The smoltcp `Device` over one queue: at most one received frame (the one being processed) and a
//! transmit batch that is flushed to the queue whenever it fills.

use crate::pmd::{Caps, Frame, Queue};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames kept for one transmit burst before the batch is flushed.
pub(crate) const TX_BATCH: usize = 64;

/// Transmit-side state that outlives one `Dev`: the batch and its counters.
pub(crate) struct TxSide<F> {
    pub batch: Vec<F>,
    pub frames: u64,
    pub bytes: u64,
    /// Frames lost because the backend had no buffer or its ring stayed full.
    pub ring_full: u64,
    /// An ARP request went out since this was last cleared.
    pub arp_sent: bool,
    /// A frame bigger than the buffers (never expected; counted and dropped).
    scratch: Vec<u8>,
}

impl<F: Frame> TxSide<F> {
    pub fn new() -> Self {
        TxSide {
            batch: Vec::with_capacity(TX_BATCH),
            frames: 0,
            bytes: 0,
            ring_full: 0,
            arp_sent: false,
            scratch: vec![0; 65_536],
        }
    }

    /// Hands the batch to the queue. Returns false if frames are left because the ring is full.
    pub fn flush<Q: Queue<Frame = F>>(&mut self, queue: &mut Q) -> bool {
        if !self.batch.is_empty() {
            queue.tx_burst(&mut self.batch);
        }
        self.batch.is_empty()
    }
}

pub(crate) fn capabilities(caps: &Caps) -> DeviceCapabilities {
    let mut d = DeviceCapabilities::default();
    d.medium = Medium::Ethernet;
    d.max_transmission_unit = caps.mtu + 14;
    let tx = if caps.tx_checksum_offload {
        Checksum::None
    } else {
        // Compute on transmit; receive checks happen once, in demux.
        Checksum::Tx
    };
    let mut c = ChecksumCapabilities::ignored();
    c.ipv4 = tx;
    c.tcp = tx;
    c.udp = tx;
    // No NIC offloads ICMP checksums: compute them even when the port fills in IP/TCP/UDP ones.
    c.icmpv4 = Checksum::Tx;
    d.checksum = c;
    d
}

pub(crate) struct Dev<'a, Q: Queue> {
    pub queue: &'a mut Q,
    pub tx: &'a mut TxSide<Q::Frame>,
    pub rx: Option<&'a [u8]>,
    pub caps: DeviceCapabilities,
}

impl<'a, Q: Queue> Dev<'a, Q> {
    /// Makes room in the batch; false when the ring is full and nothing more can go out now.
    fn room(&mut self) -> bool {
        if self.tx.batch.len() < TX_BATCH {
            return true;
        }
        self.tx.flush(self.queue);
        self.tx.batch.len() < TX_BATCH
    }
}

pub(crate) struct Rx<'a>(&'a [u8]);

pub(crate) struct Tx<'a, 'b, Q: Queue> {
    dev: &'b mut Dev<'a, Q>,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<Q: Queue> phy::TxToken for Tx<'_, '_, Q> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let dev = self.dev;
        let frame = if dev.room() {
            dev.queue.alloc_tx()
        } else {
            None
        };
        match frame {
            Some(mut frame) if len <= frame.capacity() => {
                frame.set_len(len);
                let r = f(frame.data_mut());
                let data = frame.data();
                // EtherType ARP, operation request.
                if len >= 22 && data[12] == 0x08 && data[13] == 0x06 && data[21] == 1 {
                    dev.tx.arp_sent = true;
                }
                dev.tx.frames += 1;
                dev.tx.bytes += len as u64;
                dev.tx.batch.push(frame);
                r
            }
            other => {
                if let Some(f) = other {
                    dev.queue.free(f);
                }
                dev.tx.ring_full += 1;
                let n = len.min(dev.tx.scratch.len());
                f(&mut dev.tx.scratch[..n])
            }
        }
    }
}

impl<'a, Q: Queue> phy::Device for Dev<'a, Q> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'a, 'b, Q>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((Rx(frame), Tx { dev: self }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if !self.room() {
            return None;
        }
        Some(Tx { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}
