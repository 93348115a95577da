//! A device that records every write and flush, and produces the images a
//! crash could leave (in the spirit of redb's crash-test backend).
//!
//! The contract of [`BlockDevice`] says: at a crash, everything written
//! before the last completed flush survives; writes after it may each be
//! lost, applied, or torn at [`SECTOR_SIZE`] boundaries, in any order.
//! [`RecordingDevice::crash_image`] builds exactly such an image for a crash
//! right after operation `at` of the log, choosing the fate of every
//! unflushed write from a seed.
//!
//! Invariants:
//! - `current` is always `base` with every recorded write applied in order
//!   (what reads return);
//! - the log only grows; `Flush` entries mark durability points.

use std::sync::Mutex;

use crate::device::{check_range, BlockDevice, Result, SECTOR_SIZE};

/// One recorded operation.
#[derive(Clone, Debug)]
pub enum Recorded {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

struct State {
    base: Vec<u8>,
    current: Vec<u8>,
    log: Vec<Recorded>,
}

/// The recording device.
pub struct RecordingDevice {
    state: Mutex<State>,
}

/// What happens to one unflushed write in a crash image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Lost,
    Applied,
    /// Only some of its sectors made it.
    Torn,
}

/// A small deterministic generator (xorshift64*), so crash images are
/// reproducible from a printed seed without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl RecordingDevice {
    /// A device whose durable content at the start is `base`.
    pub fn new(base: Vec<u8>) -> RecordingDevice {
        RecordingDevice { state: Mutex::new(State { current: base.clone(), base, log: Vec::new() }) }
    }

    /// Number of recorded operations.
    pub fn ops(&self) -> usize {
        self.state.lock().expect("poisoned").log.len()
    }

    /// Indexes of the recorded flushes.
    pub fn flush_points(&self) -> Vec<usize> {
        let s = self.state.lock().expect("poisoned");
        s.log.iter().enumerate().filter(|(_, o)| matches!(o, Recorded::Flush)).map(|(i, _)| i).collect()
    }

    /// The current (newest) content.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state.lock().expect("poisoned").current.clone()
    }

    /// The image a crash right after the first `at` operations leaves:
    /// every write before the last flush among them applied in order; the
    /// later ones lost, applied or torn per `rng`, in a random order.
    /// `rng == None` keeps exactly the durable state (all unflushed writes
    /// lost).
    pub fn crash_image(&self, at: usize, rng: Option<&mut Rng>) -> Vec<u8> {
        let s = self.state.lock().expect("poisoned");
        let at = at.min(s.log.len());
        let last_flush = s.log[..at].iter().rposition(|o| matches!(o, Recorded::Flush)).map_or(0, |i| i + 1);
        let mut img = s.base.clone();
        for op in &s.log[..last_flush] {
            if let Recorded::Write { offset, data } = op {
                img[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
        }
        let Some(rng) = rng else { return img };
        let mut tail: Vec<&Recorded> = s.log[last_flush..at].iter().collect();
        // Random order (Fisher-Yates).
        for i in (1..tail.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            tail.swap(i, j);
        }
        for op in tail {
            let Recorded::Write { offset, data } = op else { continue };
            let fate = match rng.below(3) {
                0 => Fate::Lost,
                1 => Fate::Applied,
                _ => Fate::Torn,
            };
            let off = *offset as usize;
            match fate {
                Fate::Lost => {}
                Fate::Applied => img[off..off + data.len()].copy_from_slice(data),
                Fate::Torn => {
                    // Sectors are atomic; each one lands or not.
                    let sector = SECTOR_SIZE as usize;
                    let mut pos = 0;
                    while pos < data.len() {
                        // Sector boundaries are absolute device offsets.
                        let end = ((off + pos) / sector + 1) * sector - off;
                        let end = end.min(data.len());
                        if rng.below(2) == 0 {
                            img[off + pos..off + end].copy_from_slice(&data[pos..end]);
                        }
                        pos = end;
                    }
                }
            }
        }
        img
    }
}

impl BlockDevice for RecordingDevice {
    fn size(&self) -> u64 {
        self.state.lock().expect("poisoned").base.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.state.lock().expect("poisoned");
        check_range("read", offset, buf.len(), s.base.len() as u64)?;
        buf.copy_from_slice(&s.current[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut s = self.state.lock().expect("poisoned");
        check_range("write", offset, buf.len(), s.base.len() as u64)?;
        s.current[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        s.log.push(Recorded::Write { offset, data: buf.to_vec() });
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.state.lock().expect("poisoned").log.push(Recorded::Flush);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_state_is_what_was_flushed() {
        let d = RecordingDevice::new(vec![0; 4096]);
        d.write_at(0, &[1; 512]).unwrap();
        d.flush().unwrap();
        d.write_at(512, &[2; 1024]).unwrap();
        let img = d.crash_image(d.ops(), None);
        assert_eq!(&img[..512], &[1; 512][..]);
        assert_eq!(&img[512..1536], &[0; 1024][..], "unflushed write must be lost in the durable image");
        // Reads see everything.
        let mut b = [0u8; 1];
        d.read_at(600, &mut b).unwrap();
        assert_eq!(b[0], 2);
        // A crash before the flush loses the first write too.
        assert_eq!(d.crash_image(1, None)[0], 0);
    }

    #[test]
    fn torn_writes_split_only_at_sector_boundaries() {
        let d = RecordingDevice::new(vec![0; 8192]);
        d.write_at(1024, &[7; 4096]).unwrap();
        let mut seen_torn = false;
        for seed in 0..64 {
            let img = d.crash_image(d.ops(), Some(&mut Rng::new(seed)));
            for s in (1024..5120).step_by(512) {
                let sec = &img[s..s + 512];
                assert!(sec.iter().all(|&b| b == 0) || sec.iter().all(|&b| b == 7), "sector {s} torn inside");
            }
            let landed = (1024..5120).step_by(512).filter(|&s| img[s] == 7).count();
            seen_torn |= landed > 0 && landed < 8;
        }
        assert!(seen_torn, "64 seeds never tore the write");
    }
}
