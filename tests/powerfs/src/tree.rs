//! The file system's state, in two versions: what processes see now, and
//! what a power cut would leave (the *durable* version). No FUSE here: the
//! [`crate::fuse`] layer translates requests into these calls.
//!
//! - A file's bytes live in a backing file on the host (its durable
//!   content) plus [`Extents`] in memory (written since its last sync).
//!   `sync_file` writes the extents into the backing file; `cut` drops them.
//! - A directory holds its current entries and its durable entries;
//!   `sync_dir` copies the first over the second; `cut` does the reverse.
//! - After a cut ([`crate::power`]) only what is reachable from the root
//!   through durable entries exists: a file whose name was never made
//!   durable is gone with its data, however often the file itself was synced.
//!
//! Errors are plain errno values (`libc::ENOENT`, …), as FUSE answers them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::extents::Extents;

/// An inode number; [`ROOT`] is the mount's root directory.
pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;
/// The unit a torn write keeps: a prefix of whole sectors survives.
pub const SECTOR_BYTES: u64 = 512;

/// An errno value.
pub type Errno = i32;
/// A result whose error is an errno value.
pub type Result<T> = std::result::Result<T, Errno>;

/// What kind of inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// Permission bits, owner and times: durable with the inode's next sync.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Permission bits (`0o644`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification of the content.
    pub mtime: SystemTime,
    /// Last change of the inode.
    pub ctime: SystemTime,
}

impl Meta {
    /// Fresh metadata stamped now.
    pub fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta { perm, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

#[derive(Debug, Default)]
pub(crate) struct FileData {
    pub(crate) size: u64,
    pub(crate) durable_size: u64,
    /// Bytes of the backing file still valid: the lowest size the file was
    /// truncated to since its last sync (beyond it, unsynced reads see zeros).
    pub(crate) backing_valid: u64,
    pub(crate) dirty: Extents,
    pub(crate) backing: Option<File>,
}

#[derive(Debug, Default)]
pub(crate) struct DirData {
    pub(crate) entries: BTreeMap<OsString, Ino>,
    pub(crate) durable: BTreeMap<OsString, Ino>,
    pub(crate) parent: Ino,
}

#[derive(Debug)]
pub(crate) enum Body {
    File(FileData),
    Dir(DirData),
    Symlink(PathBuf),
}

#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) body: Body,
    pub(crate) meta: Meta,
    pub(crate) durable_meta: Meta,
    /// Current names (entries) of this inode.
    pub(crate) links: u32,
    /// Durable entries naming it (may still be unreachable, see the module docs).
    pub(crate) durable_links: u32,
    /// Open file handles.
    pub(crate) open: u32,
}

/// What `stat` shows of an inode.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Kind.
    pub kind: Kind,
    /// Size in bytes (4096 for a directory, the target's length for a symlink).
    pub size: u64,
    /// Hard links (a directory counts `.` and its subdirectories' `..`).
    pub nlink: u32,
    /// Permission bits, owner, times.
    pub meta: Meta,
}

/// The most recent write, while its inode is unsynced: what a cut may tear.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastWrite {
    pub(crate) ino: Ino,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// What a cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced bytes dropped.
    pub bytes_dropped: u64,
    /// Inodes gone (never made durable under a durable name).
    pub inodes_dropped: u64,
    /// A torn write: the inode and the byte range of it that survived.
    pub torn: Option<(Ino, u64, u64)>,
}

/// Every inode, and the directory the durable data lives in.
#[derive(Debug)]
pub struct Tree {
    pub(crate) inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    pub(crate) backing_dir: PathBuf,
    pub(crate) last_write: Option<LastWrite>,
}

fn read_full_at(file: &File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64)? {
            0 => break, // past the end: zeros stay
            n => done += n,
        }
    }
    Ok(())
}

fn io_errno(error: &std::io::Error) -> Errno {
    error.raw_os_error().unwrap_or(libc::EIO)
}

impl Tree {
    /// An empty tree whose durable file data goes to `backing_dir` (created, must be empty).
    ///
    /// # Errors
    /// When `backing_dir` cannot be created.
    pub fn new(backing_dir: &Path, uid: u32, gid: u32) -> std::io::Result<Tree> {
        std::fs::create_dir_all(backing_dir)?;
        let meta = Meta::new(0o755, uid, gid);
        let root = Inode {
            body: Body::Dir(DirData { parent: ROOT, ..DirData::default() }),
            meta,
            durable_meta: meta,
            links: 1,
            durable_links: 1,
            open: 0,
        };
        let inodes = HashMap::from([(ROOT, root)]);
        Ok(Tree { inodes, next_ino: ROOT + 1, backing_dir: backing_dir.to_owned(), last_write: None })
    }

    fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirData> {
        match &self.inode(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            _ => Err(libc::ENOTDIR),
        }
    }

    pub(crate) fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirData> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            _ => Err(libc::ENOTDIR),
        }
    }

    pub(crate) fn file_mut(&mut self, ino: Ino) -> Result<&mut FileData> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    /// The inode `name` in directory `parent` names.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        self.dir(parent)?.entries.get(name).copied().ok_or(libc::ENOENT)
    }

    /// What `stat` shows.
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn attr(&self, ino: Ino) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let (kind, size, nlink) = match &inode.body {
            Body::File(file) => (Kind::File, file.size, inode.links),
            Body::Dir(dir) => {
                let subdirs = dir.entries.values().filter(|child| self.is_dir(**child)).count();
                (Kind::Dir, 4096, 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2))
            }
            Body::Symlink(target) => (Kind::Symlink, target.as_os_str().len() as u64, inode.links),
        };
        Ok(Attr { ino, kind, size, nlink, meta: inode.meta })
    }

    fn is_dir(&self, ino: Ino) -> bool {
        matches!(self.inodes.get(&ino).map(|inode| &inode.body), Some(Body::Dir(_)))
    }

    /// Creates `name` in `parent`: a file, a directory, or a symlink to `target`.
    ///
    /// # Errors
    /// `EEXIST`, `ENOENT`, `ENOTDIR`.
    pub fn create(&mut self, parent: Ino, name: &OsStr, kind: Kind, meta: Meta, target: Option<&Path>) -> Result<Ino> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File(FileData::default()),
            Kind::Dir => Body::Dir(DirData { parent, ..DirData::default() }),
            Kind::Symlink => Body::Symlink(target.ok_or(libc::EINVAL)?.to_owned()),
        };
        self.inodes.insert(ino, Inode { body, meta, durable_meta: meta, links: 1, durable_links: 0, open: 0 });
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            inode.meta.mtime = now;
            inode.meta.ctime = now;
        }
    }

    /// A new name `name` in `parent` for the file `ino`.
    ///
    /// # Errors
    /// `EEXIST`, `EPERM` (a directory), `ENOENT`.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Result<()> {
        if self.is_dir(ino) {
            return Err(libc::EPERM);
        }
        self.inode(ino)?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.inode_mut(ino)?.links += 1;
        self.touch(parent);
        Ok(())
    }

    /// Removes the entry `name` of `parent`; `dir` says which kind it must name.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`/`ENOTDIR` (wrong kind), `ENOTEMPTY`.
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        match (dir, self.is_dir(ino)) {
            (false, true) => return Err(libc::EISDIR),
            (true, false) => return Err(libc::ENOTDIR),
            (true, true) if !self.dir(ino)?.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino);
        self.touch(parent);
        Ok(())
    }

    /// One name of `ino` went away: free it when nothing refers to it.
    fn unlinked(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links = inode.links.saturating_sub(1);
        }
        self.free_if_unused(ino);
    }

    fn free_if_unused(&mut self, ino: Ino) {
        let unused = self
            .inodes
            .get(&ino)
            .is_some_and(|inode| inode.links == 0 && inode.durable_links == 0 && inode.open == 0 && ino != ROOT);
        if unused {
            self.inodes.remove(&ino);
            let _ = std::fs::remove_file(self.backing_dir.join(ino.to_string()));
            if self.last_write.is_some_and(|write| write.ino == ino) {
                self.last_write = None;
            }
        }
    }

    /// Renames `parent/name` to `new_parent/new_name` (POSIX: replaces a
    /// target of the same kind; a directory target must be empty).
    ///
    /// # Errors
    /// `ENOENT`, `EEXIST` (`no_replace`), `EISDIR`, `ENOTDIR`, `ENOTEMPTY`, `EINVAL`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if self.is_dir(ino) && self.is_ancestor(ino, new_parent) {
            return Err(libc::EINVAL);
        }
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (self.is_dir(ino), self.is_dir(target)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.dir(target)?.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.dir_mut(new_parent)?.entries.remove(new_name);
            self.unlinked(target);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?.entries.insert(new_name.to_owned(), ino);
        if let Ok(dir) = self.dir_mut(ino) {
            dir.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or a directory above it.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        for _ in 0..self.inodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.dir(ino) {
                Ok(dir) if ino != ROOT => ino = dir.parent,
                _ => return false,
            }
        }
        false
    }

    /// The entries of directory `ino`, `.` and `..` first.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(Ino, Kind, OsString)>> {
        let dir = self.dir(ino)?;
        let mut out = vec![(ino, Kind::Dir, OsString::from(".")), (dir.parent, Kind::Dir, OsString::from(".."))];
        for (name, child) in &dir.entries {
            let kind = self.attr(*child).map_or(Kind::File, |attr| attr.kind);
            out.push((*child, kind, name.clone()));
        }
        Ok(out)
    }

    /// The target of symlink `ino`.
    ///
    /// # Errors
    /// `ENOENT`, `EINVAL` (not a symlink).
    pub fn readlink(&self, ino: Ino) -> Result<PathBuf> {
        match &self.inode(ino)?.body {
            Body::Symlink(target) => Ok(target.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// A handle on `ino` was opened or closed (an open inode outlives its names).
    pub fn set_open(&mut self, ino: Ino, opened: bool) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = if opened { inode.open + 1 } else { inode.open.saturating_sub(1) };
        }
        if !opened {
            self.free_if_unused(ino);
        }
    }

    /// Up to `size` bytes of file `ino` from `offset`: the durable content
    /// with the unsynced writes over it.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`, or the backing file's error.
    pub fn read(&mut self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = self.file_mut(ino)?;
        if offset >= file.size {
            return Ok(Vec::new());
        }
        let len = u64::from(size).min(file.size - offset);
        let mut out = vec![0u8; usize::try_from(len).map_err(|_| libc::EINVAL)?];
        if offset < file.backing_valid {
            if let Some(backing) = &file.backing {
                let valid = usize::try_from((file.backing_valid - offset).min(len)).map_err(|_| libc::EINVAL)?;
                read_full_at(backing, &mut out[..valid], offset).map_err(|e| io_errno(&e))?;
            }
        }
        file.dirty.overlay(offset, &mut out);
        Ok(out)
    }

    /// Writes `data` at `offset` of file `ino`, volatile until the file's next sync.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        let file = self.file_mut(ino)?;
        file.dirty.write(offset, data);
        file.size = file.size.max(offset + data.len() as u64);
        self.touch(ino);
        self.last_write = Some(LastWrite { ino, offset, len: data.len() as u64 });
        Ok(())
    }

    /// Sets the size of file `ino` (volatile until its next sync).
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<()> {
        let file = self.file_mut(ino)?;
        if size < file.size {
            file.dirty.truncate(size);
            file.backing_valid = file.backing_valid.min(size);
        }
        file.size = size;
        if self.last_write.is_some_and(|write| write.ino == ino) {
            self.last_write = None;
        }
        self.touch(ino);
        Ok(())
    }

    /// Changes permission bits, owner or times (volatile until the next sync).
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn set_meta(&mut self, ino: Ino, change: impl FnOnce(&mut Meta)) -> Result<()> {
        let inode = self.inode_mut(ino)?;
        change(&mut inode.meta);
        inode.meta.ctime = SystemTime::now();
        Ok(())
    }

    pub(crate) fn backing(&mut self, ino: Ino) -> Result<()> {
        let path = self.backing_dir.join(ino.to_string());
        let file = self.file_mut(ino)?;
        if file.backing.is_none() {
            let opened = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
            file.backing = Some(opened.map_err(|e| io_errno(&e))?);
        }
        Ok(())
    }

    /// fsync/fdatasync of `ino`: its data, size and metadata become durable
    /// (its names do not: that takes a sync of their directory).
    ///
    /// # Errors
    /// `ENOENT`, or the backing file's error.
    pub fn sync_file(&mut self, ino: Ino) -> Result<()> {
        if self.is_dir(ino) {
            return self.sync_dir(ino);
        }
        if matches!(self.inode(ino)?.body, Body::File(_)) {
            self.backing(ino)?;
            let file = self.file_mut(ino)?;
            let backing = file.backing.as_ref().expect("opened just above");
            let result = (|| {
                if file.backing_valid < file.durable_size {
                    backing.set_len(file.backing_valid)?;
                }
                for (start, run) in file.dirty.runs() {
                    backing.write_all_at(run, start)?;
                }
                backing.set_len(file.size)
            })();
            result.map_err(|e| io_errno(&e))?;
            file.durable_size = file.size;
            file.backing_valid = file.size;
            file.dirty.clear();
            if self.last_write.is_some_and(|write| write.ino == ino) {
                self.last_write = None;
            }
        }
        let inode = self.inode_mut(ino)?;
        inode.durable_meta = inode.meta;
        Ok(())
    }

    /// fsync of directory `ino`: its entries (and its metadata) become durable.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn sync_dir(&mut self, ino: Ino) -> Result<()> {
        let dir = self.dir_mut(ino)?;
        let before = std::mem::replace(&mut dir.durable, dir.entries.clone());
        let after = dir.durable.clone();
        for target in before.values() {
            if let Some(inode) = self.inodes.get_mut(target) {
                inode.durable_links = inode.durable_links.saturating_sub(1);
            }
        }
        for target in after.values() {
            if let Some(inode) = self.inodes.get_mut(target) {
                inode.durable_links += 1;
            }
        }
        for target in before.values() {
            self.free_if_unused(*target);
        }
        let inode = self.inode_mut(ino)?;
        inode.durable_meta = inode.meta;
        Ok(())
    }

    /// Bytes written and not synced yet, over every file.
    pub fn dirty_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| match &inode.body {
                Body::File(file) => file.dirty.len_bytes(),
                _ => 0,
            })
            .sum()
    }
}
