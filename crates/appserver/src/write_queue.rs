//! The write queue of the hub link: what waits to be written to the hub.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Bytes waiting for the hub's socket: chunks of data frames, shared with the retransmit buffer
/// rather than copied into a write buffer, and the small frames (control, acks) encoded between
/// them. Written with vectored writes, one iovec per chunk.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    queued: usize,
    /// Frames encoded since the last chunk was queued; frozen into a chunk when the next comes.
    tail: BytesMut,
}

impl WriteQueue {
    /// Where small frames are encoded, after everything queued so far.
    pub(crate) fn tail(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Queues a chunk of whole frames after everything queued so far.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !self.tail.is_empty() {
            let tail = self.tail.split().freeze();
            self.queued += tail.len();
            self.chunks.push_back(tail);
        }
        self.queued += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.queued + self.tail.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Buf for WriteQueue {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&self.tail, |chunk| chunk)
    }

    fn advance(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.tail.advance(count);
                return;
            };
            let step = count.min(front.len());
            front.advance(step);
            self.queued -= step;
            count -= step;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let pieces = self.chunks.iter().map(|chunk| &chunk[..]).chain([&self.tail[..]]);
        let mut filled = 0;
        for (slot, piece) in dst.iter_mut().zip(pieces.filter(|piece| !piece.is_empty())) {
            *slot = IoSlice::new(piece);
            filled += 1;
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_leave_in_the_order_they_were_queued_across_partial_writes() {
        let mut out = WriteQueue::default();
        out.tail().extend_from_slice(b"ab");
        out.push(Bytes::from_static(b"cde"));
        out.tail().extend_from_slice(b"f");
        out.push(Bytes::from_static(b"gh"));
        out.tail().extend_from_slice(b"ij");
        assert_eq!(out.len(), 10);
        let vectored = |out: &WriteQueue| {
            let mut slices = [IoSlice::new(&[]); 8];
            let count = out.chunks_vectored(&mut slices);
            slices[..count].iter().map(|slice| slice.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(vectored(&out), [&b"ab"[..], b"cde", b"f", b"gh", b"ij"]);

        // Writes that end mid-chunk or cross several.
        let mut written = Vec::new();
        for step in [1, 3, 2, 4] {
            written.extend_from_slice(&vectored(&out).concat()[..step]);
            out.advance(step);
        }
        assert_eq!(written, b"abcdefghij");
        assert!(out.is_empty());
        assert!(vectored(&out).is_empty());
    }
}
