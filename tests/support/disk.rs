//! A small filesystem of a test's own, for a database to run out of room or
//! turn read-only on: a tmpfs of a given size, or an ext4 image on a loop
//! device, mounted on a temporary folder and unmounted when dropped (also
//! when the test panics).
//!
//! Mounting needs root, as the tests run here and in CI. Where it fails,
//! [`cannot_mount`] fails the test with the reason, unless
//! `LEADGATE_DRILLS_ALLOW_NO_MOUNT=1` lets it skip (loudly).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A filesystem mounted for one test.
pub struct SmallDisk {
    mount_point: tempfile::TempDir,
    /// ext4 only: the loop device and the tmpfs holding its image.
    device: Option<(String, Box<SmallDisk>)>,
    mounted: bool,
}

/// Run a command; its stdout, or what it said when it failed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The test cannot mount a filesystem (`why`): fail, or with
/// `LEADGATE_DRILLS_ALLOW_NO_MOUNT=1` say that it is skipped; the caller
/// then returns.
pub fn cannot_mount(why: &str) {
    if std::env::var("LEADGATE_DRILLS_ALLOW_NO_MOUNT").is_ok_and(|v| v == "1") {
        eprintln!(
            "\n*** SKIPPED: this drill needs to mount a filesystem of its own (run as root): \
             {why} ***\n"
        );
    } else {
        panic!(
            "this drill needs to mount a filesystem of its own and cannot: {why}\n\
             (run the tests as root, as CI does, or set LEADGATE_DRILLS_ALLOW_NO_MOUNT=1 \
             to skip it)"
        );
    }
}

impl SmallDisk {
    /// A tmpfs of `bytes`.
    pub fn tmpfs(bytes: u64) -> Result<SmallDisk, String> {
        let mount_point = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = mount_point.path().to_str().unwrap().to_owned();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", &dir],
        )?;
        Ok(SmallDisk {
            mount_point,
            device: None,
            mounted: true,
        })
    }

    /// An ext4 filesystem of `bytes` on a loop device over an image file,
    /// mounted with `errors=remount-ro`, as a production disk would be.
    ///
    /// The image lives on a tmpfs of its own: on the machine's disk, every
    /// fsync on the loop device became an fsync of the image file there,
    /// which took minutes while other builds wrote to that disk, and
    /// stalled the drill (and the daemon) at random.
    pub fn ext4(bytes: u64) -> Result<SmallDisk, String> {
        let mount_point = tempfile::tempdir().map_err(|e| e.to_string())?;
        let backing = SmallDisk::tmpfs(bytes + (1 << 20))?;
        let image = backing.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()])?
            .trim()
            .to_owned();
        // From here on, dropping the disk detaches the device.
        let mut disk = SmallDisk {
            mount_point,
            device: Some((device.clone(), Box::new(backing))),
            mounted: false,
        };
        run("mkfs.ext4", &["-q", &device])?;
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&mut self) -> Result<(), String> {
        let (device, _) = self.device.as_ref().expect("an ext4 disk");
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "errors=remount-ro",
                device,
                self.mount_point.path().to_str().unwrap(),
            ],
        )?;
        self.mounted = true;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// The URL of an SQLite database on this disk.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/leads.db", self.path().display())
    }

    /// `mount -o remount,<options>`.
    pub fn remount(&self, options: &str) -> Result<(), String> {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,{options}"),
                self.path().to_str().unwrap(),
            ],
        )
        .map(|_| ())
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Write zeros to a file until the disk has no room left; how many
    /// bytes that took.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // tmpfs takes the last partial page, but a page may be free; fill
        // with single bytes to be sure there is nothing left.
        while let Ok(n @ 1..) = f.write(&[0]) {
            written += n as u64;
        }
        written
    }

    /// Delete what [`fill`](Self::fill) wrote.
    pub fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }

    /// Free bytes on the disk (statvfs, for the unprivileged).
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// ext4: report a filesystem error, as the kernel does on a failing
    /// disk; under `errors=remount-ro` the filesystem turns read-only at
    /// once, under everyone who has files open on it.
    pub fn fail(&self) -> Result<(), String> {
        let (device, _) = self.device.as_ref().expect("an ext4 disk");
        let name = Path::new(device).file_name().unwrap().to_str().unwrap();
        let knob = format!("/sys/fs/ext4/{name}/trigger_fs_error");
        std::fs::write(&knob, "1").map_err(|e| format!("cannot write {knob}: {e}"))
    }

    /// ext4: what an administrator does after an error: unmount (nothing
    /// may have a file open on it), `e2fsck -fy`, mount again. What e2fsck
    /// said (its exit code and summary line).
    pub fn repair(&mut self) -> Result<String, String> {
        self.unmount()?;
        let (device, _) = self.device.as_ref().expect("an ext4 disk");
        let out = Command::new("e2fsck")
            .args(["-fy", device])
            .output()
            .map_err(|e| format!("cannot run e2fsck: {e}"))?;
        // 0: clean, 1: errors corrected.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(format!("e2fsck failed ({}): {said}", out.status));
        }
        self.mount()?;
        let summary = said
            .lines()
            .find(|l| l.contains(" files ("))
            .unwrap_or(said.trim());
        Ok(format!(
            "exit {}: {summary}",
            out.status.code().unwrap_or(-1)
        ))
    }

    /// Unmount, retrying for a few seconds while something still closes
    /// its files.
    fn unmount(&mut self) -> Result<(), String> {
        let dir = self.path().to_str().unwrap().to_owned();
        let mut last = String::new();
        for _ in 0..50 {
            match run("umount", &[&dir]) {
                Ok(_) => {
                    self.mounted = false;
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            // Still busy (a process the test started and lost): detach it
            // now, the kernel frees it when the last file closes.
            let _ = run("umount", &["-l", self.path().to_str().unwrap()]);
        }
        if let Some((device, _)) = &self.device {
            let _ = run("losetup", &["-d", device]);
        }
    }
}
