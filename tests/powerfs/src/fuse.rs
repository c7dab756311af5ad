//! The FUSE side: each request becomes a call on the [`Tree`] under one
//! mutex. Nothing here decides durability; it only keeps the kernel from
//! caching anything (zero TTLs, `FOPEN_DIRECT_IO`, no writeback cache), so
//! that after a cut a process reads exactly the durable state, and it
//! keeps the table of open handles, which a cut kills: their process lost
//! power with the machine, so whatever it still does through them never
//! happened (writes and syncs are accepted and dropped, reads fail `EIO`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Attr, Ino, Kind, Meta, Tree};

/// Nothing may be cached by the kernel: every lookup and stat comes here.
const TTL: Duration = Duration::ZERO;

/// One open file or directory.
#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: Ino,
    /// Opened with `O_SYNC`/`O_DSYNC`: every write is durable at once.
    sync: bool,
    /// Opened before a cut: its writes go nowhere.
    dead: bool,
}

/// Counters for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// fsync/fdatasync calls on files.
    pub file_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    /// Writes.
    pub writes: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// What the mount and its owner share.
#[derive(Debug)]
pub struct State {
    /// The inodes.
    pub tree: Tree,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    /// Counters.
    pub stats: Stats,
}

impl State {
    /// A fresh state over `tree`.
    pub fn new(tree: Tree) -> State {
        State { tree, handles: HashMap::new(), next_handle: 1, stats: Stats::default() }
    }

    fn open(&mut self, ino: Ino, flags: i32) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.handles.insert(handle, Handle { ino, sync, dead: false });
        self.tree.set_open(ino, true);
        handle
    }

    /// Kills every handle: a cut leaves none of them able to change anything.
    pub fn kill_handles(&mut self) {
        for handle in self.handles.values_mut() {
            handle.dead = true;
        }
    }

    /// Closes `fh`; a dead handle's inode forgot it at the cut already.
    fn close(&mut self, fh: FileHandle) {
        if let Some(handle) = self.handles.remove(&fh.0) {
            if !handle.dead {
                self.tree.set_open(handle.ino, false);
            }
        }
    }
}

/// The file system as fuser runs it.
#[derive(Debug, Clone)]
pub struct Fuse {
    /// Shared with [`crate::PowerFs`], which cuts.
    pub state: Arc<Mutex<State>>,
}

fn kind(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.meta.atime,
        mtime: attr.meta.mtime,
        ctime: attr.meta.ctime,
        crtime: attr.meta.ctime,
        kind: kind(attr.kind),
        perm: attr.meta.perm,
        nlink: attr.nlink,
        uid: attr.meta.uid,
        gid: attr.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Fuse {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reply_entry(state: &State, ino: Ino, reply: ReplyEntry) {
        match state.tree.attr(ino) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn new_inode(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        target: Option<&Path>,
    ) -> Result<Ino, i32> {
        let perm = u16::try_from(perm & 0o7777).unwrap_or(0o644);
        let meta = Meta::new(perm, req.uid(), req.gid());
        self.lock().tree.create(parent.0, name, kind, meta, target)
    }

    fn handle(state: &State, fh: FileHandle) -> Result<Handle, i32> {
        state.handles.get(&fh.0).copied().ok_or(libc::EBADF)
    }
}

impl fuser::Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.lock();
        match state.tree.lookup(parent.0, name) {
            Ok(ino) => Self::reply_entry(&state, ino, reply),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().tree.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let tree = &mut state.tree;
        let result = size.map_or(Ok(()), |size| tree.truncate(ino.0, size)).and_then(|()| {
            tree.set_meta(ino.0, |meta| {
                if let Some(mode) = mode {
                    meta.perm = u16::try_from(mode & 0o7777).unwrap_or(meta.perm);
                }
                meta.uid = uid.unwrap_or(meta.uid);
                meta.gid = gid.unwrap_or(meta.gid);
                meta.atime = atime.map_or(meta.atime, time_of);
                meta.mtime = mtime.map_or(meta.mtime, time_of);
            })
        });
        match result.and_then(|()| tree.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.lock().tree.readlink(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.new_inode(req, parent, name, Kind::Dir, mode & !umask, None) {
            Ok(ino) => Self::reply_entry(&self.lock(), ino, reply),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().tree.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().tree.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        match self.new_inode(req, parent, link_name, Kind::Symlink, 0o777, Some(target)) {
            Ok(ino) => Self::reply_entry(&self.lock(), ino, reply),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.lock().tree.rename(parent.0, name, newparent.0, newname, no_replace) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut state = self.lock();
        match state.tree.link(ino.0, newparent.0, newname) {
            Ok(()) => Self::reply_entry(&state, ino.0, reply),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        if let Err(code) = state.tree.attr(ino.0) {
            return reply.error(errno(code));
        }
        let handle = state.open(ino.0, flags.0);
        reply.opened(FileHandle(handle), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.lock();
        let live = Self::handle(&state, fh).and_then(|handle| if handle.dead { Err(libc::EIO) } else { Ok(handle) });
        match live.and_then(|handle| state.tree.read(handle.ino, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        state.stats.writes += 1;
        let result = Self::handle(&state, fh).and_then(|handle| {
            if handle.dead {
                return Ok(()); // written after the power went out: never happened
            }
            state.tree.write(handle.ino, offset, data)?;
            if handle.sync || flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
                state.tree.sync_file(handle.ino)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().close(fh);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.lock();
        state.stats.file_syncs += 1;
        // fdatasync makes data and size durable, as fsync does: the
        // metadata it may skip (times) matters to nobody here.
        let result = Self::handle(&state, fh).and_then(|handle| match handle.dead {
            true => Ok(()),
            false => state.tree.sync_file(ino.0),
        });
        match result {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        if let Err(code) = state.tree.entries(ino.0) {
            return reply.error(errno(code));
        }
        let handle = state.open(ino.0, flags.0);
        reply.opened(FileHandle(handle), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.lock().tree.entries(ino.0) {
            Ok(entries) => entries,
            Err(code) => return reply.error(errno(code)),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, child_kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(child), index as u64 + 1, kind(child_kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.lock().close(fh);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.lock();
        state.stats.dir_syncs += 1;
        let result = Self::handle(&state, fh).and_then(|handle| match handle.dead {
            true => Ok(()),
            false => state.tree.sync_dir(ino.0),
        });
        match result {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: the backing files live on the host's disk.
        reply.statfs(1 << 26, 1 << 25, 1 << 25, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.lock().tree.attr(ino.0) {
            Ok(_) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let ino = match self.new_inode(req, parent, name, Kind::File, mode & !umask, None) {
            Ok(ino) => ino,
            Err(code) => return reply.error(errno(code)),
        };
        let mut state = self.lock();
        let handle = state.open(ino, flags);
        match state.tree.attr(ino) {
            Ok(attr) => {
                reply.created(&TTL, &file_attr(&attr), Generation(0), FileHandle(handle), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(code) => reply.error(errno(code)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let result = match mode {
            // Plain allocation: the file grows to cover the range (zeros).
            0 => state.tree.attr(ino.0).and_then(|attr| {
                if offset + length > attr.size {
                    state.tree.truncate(ino.0, offset + length)
                } else {
                    Ok(())
                }
            }),
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(libc::EOPNOTSUPP),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }
}
