//! What `berth start` is waiting for, told as it happens: the guest's console log (the
//! daemon has QEMU write it to `vm/serial.log`) names each step of the guest's start, and
//! each is printed once, with the time since the command began, as it is reached. A first
//! start formats the data disk, which the user sees named rather than as a longer silence.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

/// The console lines that mark a step, and how the step is told, in the order they come.
/// A start restored from the boot snapshot has none of the lines before the hold (QEMU begins
/// the log anew), so it shows the disk's mount first.
const STEPS: [(&str, &str); 5] = [
    ("] starting", "the guest's kernel is up; its init is running"),
    ("] held for the host", "saving the guest as it is now, for faster starts"),
    ("formatting ", "formatting the data disk (first start)"),
    (" mounted at ", "the data disk is mounted"),
    ("engine started", "the engine started; waiting for its API"),
];

/// The steps `log` shows reached, as indexes into [`STEPS`], in order.
fn reached(log: &str) -> Vec<usize> {
    STEPS.iter().enumerate().filter(|(_, (mark, _))| log.contains(mark)).map(|(i, _)| i).collect()
}

/// Follows one start's console log.
pub struct BootProgress {
    log: PathBuf,
    began: Instant,
    /// The log is this start's only if written since (QEMU truncates it when it starts).
    since: SystemTime,
    told: Vec<bool>,
}

impl BootProgress {
    pub fn new(log: PathBuf) -> BootProgress {
        BootProgress { log, began: Instant::now(), since: SystemTime::now(), told: vec![false; STEPS.len()] }
    }

    /// Prints the steps reached since the last call.
    pub fn poll(&mut self) {
        let fresh = std::fs::metadata(&self.log).and_then(|m| m.modified()).is_ok_and(|t| t >= self.since);
        if !fresh {
            return;
        }
        // The guest's own lines come first, and the engine's log follows: its first lines
        // are enough.
        let mut head = Vec::new();
        let read = std::fs::File::open(&self.log).and_then(|f| f.take(64 << 10).read_to_end(&mut head));
        if read.is_err() {
            return;
        }
        let text = String::from_utf8_lossy(&head);
        for i in reached(&text) {
            if !std::mem::replace(&mut self.told[i], true) {
                eprintln!("  {:5.1} s  {}", self.began.elapsed().as_secs_f64(), STEPS[i].1);
            }
        }
    }

    /// Follows the log on a task of its own (the wait for the engine's answer blocks) until
    /// what it returns is dropped.
    pub fn follow(mut self) -> Following {
        let began = self.began;
        let task = tokio::spawn(async move {
            loop {
                self.poll();
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
        });
        Following { task, began }
    }
}

/// A log being followed; dropped, it is no longer.
pub struct Following {
    task: tokio::task::JoinHandle<()>,
    began: Instant,
}

impl Following {
    /// Tells the start done, with its time.
    pub fn ready(self) {
        self.task.abort();
        eprintln!("  {:5.1} s  ready", self.began.elapsed().as_secs_f64());
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_shows_each_step_and_a_warm_one_skips_formatting() {
        let first = "berth-init [2.86] starting\nberth-init [3.10] formatting /dev/vda as ext4 (first boot)\n\
                     berth-init [5.2] data disk /dev/vda formatted and mounted at /var/lib/berth\n\
                     berth-init [5.3] engine started (pid 91)\n";
        assert_eq!(reached(first), vec![0, 2, 3, 4]);
        let warm = "berth-init [2.86] starting\nberth-init [2.9] held for the host\nberth-init [4.1] the host said go\n\
                    berth-init [4.56] data disk /dev/vda mounted at /var/lib/berth\n";
        assert_eq!(reached(warm), vec![0, 1, 3]);
        let restored =
            "berth-init [2.9] the host said go\nberth-init [2.95] data disk /dev/vda mounted at /var/lib/berth\n";
        assert_eq!(reached(restored), vec![3]);
        assert!(reached("[    0.000000] Linux version 6.1.0").is_empty());
    }
}
