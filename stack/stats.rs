//! Counters: plain integers owned by one core, published to atomics for readers on other threads.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident, $shared:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        #[non_exhaustive]
        pub struct $name {
            $($(#[$fm])* pub $f: u64,)*
        }

        impl $name {
            /// Adds another core's counters to these (for a stack-wide total).
            pub fn add(&mut self, o: &$name) {
                $(self.$f += o.$f;)*
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($f), self.$f),)*]
            }
        }

        /// The same counters as atomics: written by the owning core only, read by anyone.
        #[derive(Debug, Default)]
        pub(crate) struct $shared {
            $($f: AtomicU64,)*
        }

        impl $shared {
            pub(crate) fn publish(&self, c: &$name) {
                $(self.$f.store(c.$f, Ordering::Relaxed);)*
            }

            pub(crate) fn snapshot(&self) -> $name {
                $name { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    /// One core's counters (or the sum over cores).
    CoreStats, SharedStats {
        /// Frames received from the port.
        frames_in,
        /// Frames handed to the port.
        frames_out,
        /// Bytes received (whole frames).
        bytes_in,
        /// Bytes transmitted (whole frames).
        bytes_out,
        /// Dropped: too short, or lengths or options that do not add up.
        drop_malformed,
        /// Dropped: IPv4, TCP, UDP or ICMP checksum wrong.
        drop_bad_checksum,
        /// Dropped: addressed to another host.
        drop_not_for_us,
        /// Dropped: IPv6, IP fragments, unknown EtherTypes.
        drop_unsupported,
        /// TCP segments or UDP datagrams for no socket (answered with RST or ICMP port unreachable).
        no_socket,
        /// Outgoing frames lost because the port's ring was full or it had no buffer.
        drop_ring_full,
        /// SYNs dropped because the listener's backlog of half-open connections was full.
        drop_syn_backlog,
        /// SYN-ACKs sent with a SYN cookie (the listener's SYN queue was full).
        syncookies_sent,
        /// Connections completed from a valid SYN cookie.
        syncookies_ok,
        /// ACKs to a listening port that were not a valid cookie (answered with RST).
        syncookies_failed,
        /// Resets sent for segments that belong to no connection.
        tcp_rst_sent,
        /// ICMP errors handed to a TCP connection (frag-needed, unreachable).
        icmp_to_tcp,
        /// ICMP errors ignored (no such connection, or sequence number not in flight).
        icmp_ignored,
        /// TCP connections that reached ESTABLISHED (accepted or connected).
        conns_opened,
        /// TCP connections whose state was released.
        conns_closed,
        /// TCP connections that ended by reset or timeout.
        conns_failed,
        /// Connections currently holding state (including TIME-WAIT and half-open).
        conns_current,
        /// Loop iterations that found work.
        busy_polls,
        /// Times the core went to sleep on its queue.
        sleeps,
    }
);
