//! Power-loss ordering of fsx's durable writes. A `kill -9` keeps the page cache, so the
//! crash tests of a running daemon cannot catch a missing fsync; this runs fsx's own write
//! sequences, through the [`Disk`] seam, over a recording model of a filesystem that at a
//! simulated power loss keeps only what was made durable, and checks every recovery point.
//!
//! The model, as POSIX promises and as ext4 and xfs behave at worst:
//! - a file's bytes are durable once an fsync or fdatasync of it returned. Bytes written
//!   since may, at a power loss, be lost, be kept, be kept in part, or leave the new
//!   length filled with zeros (delayed allocation: the size reached the disk, the data did
//!   not);
//! - a change to a directory (a create, rename, link or unlink in it) is durable once the
//!   directory was fsynced. The changes since then may survive as any prefix, in order
//!   (metadata journals commit in order; a rename is one change). An fsync of a file is
//!   not taken to make its name durable.
//!
//! - a new directory is there after a power loss only once its parent was fsynced (so
//!   are the files in it).
//!
//! A recovery point is the state right after each operation (and before the first),
//! crossed with every outcome these rules allow. The scenarios run fsx's functions over
//! the model directly, or [`replay`] what `Real` did for a whole receiving session
//! (`fsx/trace.rs`). docs/testing.md, "Power-loss ordering", has the scenarios and the
//! figures.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::disk::Disk;
use super::trace::Op;
use super::*;

/// One change to a directory's entries, as the journal would commit it.
#[derive(Clone, Debug)]
enum Change {
    Set(OsString, usize),
    Unset(OsString),
    Rename { from: OsString, to: OsString },
}

#[derive(Clone, Debug, Default)]
struct DirState {
    /// What a reader sees now.
    live: BTreeMap<OsString, usize>,
    /// What survives a power loss for sure.
    durable: BTreeMap<OsString, usize>,
    /// Changes since the last fsync of the directory, oldest first.
    since_sync: Vec<Change>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

/// Files after a power loss and a restart: full path → content.
pub(crate) type Recovered = BTreeMap<PathBuf, Vec<u8>>;

#[derive(Clone, Debug, Default)]
struct Fs {
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, DirState>,
    /// Directories made while the model ran, and their inodes (entries in their parent);
    /// the others were there, durable, from the start.
    made: BTreeSet<PathBuf>,
    dir_inodes: BTreeSet<usize>,
}

fn apply(entries: &mut BTreeMap<OsString, usize>, change: &Change) {
    match change {
        Change::Set(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        Change::Unset(name) => {
            entries.remove(name);
        }
        Change::Rename { from, to } => {
            if let Some(ino) = entries.remove(from) {
                entries.insert(to.clone(), ino);
            }
        }
    }
}

impl Fs {
    fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_os_string())),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "no parent")),
        }
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut DirState> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such directory"))
    }

    fn lookup(&mut self, path: &Path) -> io::Result<usize> {
        let (dir, name) = Fs::split(path)?;
        self.dir(&dir)?
            .live
            .get(&name)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn change(&mut self, dir: &Path, change: Change) -> io::Result<()> {
        let d = self.dir(dir)?;
        apply(&mut d.live, &change);
        d.since_sync.push(change);
        Ok(())
    }

    /// The contents a file may have after a power loss.
    fn outcomes(inode: &Inode) -> Vec<Vec<u8>> {
        if inode.data == inode.durable {
            return vec![inode.durable.clone()];
        }
        let mut zeros = inode.durable.clone();
        zeros.resize(inode.data.len(), 0);
        let half = inode.durable.len().min(inode.data.len())
            + inode.data.len().saturating_sub(inode.durable.len()) / 2;
        let mut out = vec![
            inode.durable.clone(),
            inode.data.clone(),
            zeros,
            inode.data[..half].to_vec(),
        ];
        out.sort();
        out.dedup();
        out
    }

    /// Whether `dir` is there in a recovered set of entries: it was there from the start,
    /// or its entry survived in a parent that is there.
    fn reachable(&self, set: &[(PathBuf, usize)], dir: &Path) -> bool {
        if !self.made.contains(dir) {
            return self.dirs.contains_key(dir);
        }
        set.iter()
            .any(|(p, i)| p == dir && self.dir_inodes.contains(i))
            && dir
                .parent()
                .is_some_and(|parent| self.reachable(set, parent))
    }

    /// Every state a power loss now may leave.
    fn recover(&self) -> Vec<Recovered> {
        // Entries per directory: the durable ones plus any prefix of the later changes.
        let mut entry_sets: Vec<Vec<(PathBuf, usize)>> = vec![Vec::new()];
        for (dir, d) in &self.dirs {
            let mut choices = Vec::new();
            for j in 0..=d.since_sync.len() {
                let mut entries = d.durable.clone();
                for c in &d.since_sync[..j] {
                    apply(&mut entries, c);
                }
                choices.push(entries);
            }
            entry_sets = entry_sets
                .into_iter()
                .flat_map(|base| {
                    choices.iter().map(move |entries| {
                        let mut set = base.clone();
                        set.extend(entries.iter().map(|(n, i)| (dir.join(n), *i)));
                        set
                    })
                })
                .collect();
        }
        let mut out = Vec::new();
        for set in entry_sets {
            // Files only, and only those in a directory that survived.
            let set: Vec<(PathBuf, usize)> = set
                .iter()
                .filter(|(p, i)| {
                    !self.dir_inodes.contains(i)
                        && p.parent().is_some_and(|d| self.reachable(&set, d))
                })
                .cloned()
                .collect();
            // Contents per inode named (an inode under two names has one content).
            let mut inodes: Vec<usize> = set.iter().map(|(_, i)| *i).collect();
            inodes.sort_unstable();
            inodes.dedup();
            let mut contents: Vec<BTreeMap<usize, Vec<u8>>> = vec![BTreeMap::new()];
            for ino in inodes {
                let options = Fs::outcomes(&self.inodes[ino]);
                contents = contents
                    .into_iter()
                    .flat_map(|base| {
                        options.iter().map(move |c| {
                            let mut m = base.clone();
                            m.insert(ino, c.clone());
                            m
                        })
                    })
                    .collect();
            }
            for c in contents {
                out.push(set.iter().map(|(p, i)| (p.clone(), c[i].clone())).collect());
            }
        }
        out
    }
}

/// What the model saw at one recovery point.
pub(crate) struct Point {
    /// The operation just done (`start` before the first).
    pub op: String,
    /// The scenario's own note at that moment (say, the offset it recorded).
    pub note: u64,
    pub states: Vec<Recovered>,
}

/// The recording filesystem: a [`Disk`] whose every operation adds a recovery point.
pub(super) struct Model {
    fs: RefCell<Fs>,
    points: RefCell<Vec<Point>>,
    note: RefCell<u64>,
}

impl Model {
    /// A model with these directories and durable files.
    pub(super) fn new(dirs: &[&str], files: &[(&str, &[u8])]) -> Model {
        let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        let files: Vec<(PathBuf, Vec<u8>)> = files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.to_vec()))
            .collect();
        Model::with(&dirs, &files)
    }

    /// [`Model::new`] with owned paths.
    pub(super) fn with(dirs: &[PathBuf], files: &[(PathBuf, Vec<u8>)]) -> Model {
        let mut fs = Fs::default();
        for d in dirs {
            fs.dirs.insert(d.clone(), DirState::default());
        }
        for (path, bytes) in files {
            let (dir, name) = Fs::split(path).unwrap();
            fs.inodes.push(Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
            });
            let ino = fs.inodes.len() - 1;
            let d = fs.dirs.get_mut(&dir).expect("a declared directory");
            d.live.insert(name.clone(), ino);
            d.durable.insert(name, ino);
        }
        let model = Model {
            fs: RefCell::new(fs),
            points: RefCell::new(Vec::new()),
            note: RefCell::new(0),
        };
        model.record("start");
        model
    }

    /// A model that starts from a recovered state (everything in it durable).
    pub(super) fn from_recovered(dirs: &[&str], state: &Recovered) -> Model {
        let files: Vec<(String, Vec<u8>)> = state
            .iter()
            .map(|(p, c)| (p.display().to_string(), c.clone()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (p.as_str(), &c[..])).collect();
        Model::new(dirs, &refs)
    }

    pub(super) fn set_note(&self, note: u64) {
        *self.note.borrow_mut() = note;
        self.record("note");
    }

    fn record(&self, op: &str) {
        let states = self.fs.borrow().recover();
        self.points.borrow_mut().push(Point {
            op: op.to_string(),
            note: *self.note.borrow(),
            states,
        });
    }

    pub(super) fn take_points(&self) -> Vec<Point> {
        std::mem::take(&mut *self.points.borrow_mut())
    }

    /// The files a reader sees now.
    pub(super) fn live(&self) -> Recovered {
        let fs = self.fs.borrow();
        let mut out = Recovered::new();
        for (dir, d) in &fs.dirs {
            for (name, ino) in &d.live {
                out.insert(dir.join(name), fs.inodes[*ino].data.clone());
            }
        }
        out
    }

    fn step<T>(&self, op: &str, f: impl FnOnce(&mut Fs) -> io::Result<T>) -> io::Result<T> {
        let result = f(&mut self.fs.borrow_mut());
        self.record(op);
        result
    }
}

impl Disk for Model {
    type File = usize;

    fn create_new(&self, path: &Path) -> io::Result<usize> {
        self.step("create", |fs| {
            if fs.lookup(path).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let (dir, name) = Fs::split(path)?;
            fs.inodes.push(Inode::default());
            let ino = fs.inodes.len() - 1;
            fs.change(&dir, Change::Set(name, ino))?;
            Ok(ino)
        })
    }

    fn open_partial(&self, path: &Path) -> io::Result<(usize, u64)> {
        let found = self.fs.borrow_mut().lookup(path);
        match found {
            Ok(ino) => {
                let len = self.fs.borrow().inodes[ino].data.len() as u64;
                return Ok((ino, len));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.create_new(path).map(|ino| (ino, 0))
    }

    fn write_all(&self, file: &mut usize, bytes: &[u8]) -> io::Result<()> {
        self.step("write", |fs| {
            fs.inodes[*file].data.extend_from_slice(bytes);
            Ok(())
        })
    }

    fn truncate(&self, file: &mut usize, len: u64) -> io::Result<()> {
        self.step("truncate", |fs| {
            fs.inodes[*file].data.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_all(&self, file: &usize) -> io::Result<()> {
        self.step("fsync", |fs| {
            let inode = &mut fs.inodes[*file];
            inode.durable = inode.data.clone();
            Ok(())
        })
    }

    fn sync_data(&self, file: &usize) -> io::Result<()> {
        self.step("fdatasync", |fs| {
            let inode = &mut fs.inodes[*file];
            inode.durable = inode.data.clone();
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("rename", |fs| {
            fs.lookup(from)?;
            let ((dir, from), (to_dir, to)) = (Fs::split(from)?, Fs::split(to)?);
            assert_eq!(dir, to_dir, "fsx renames within one directory");
            fs.change(&dir, Change::Rename { from, to })
        })
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("link", |fs| {
            let ino = fs.lookup(from)?;
            if fs.lookup(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let (dir, name) = Fs::split(to)?;
            fs.change(&dir, Change::Set(name, ino))
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step("unlink", |fs| {
            fs.lookup(path)?;
            let (dir, name) = Fs::split(path)?;
            fs.change(&dir, Change::Unset(name))
        })
    }

    fn files_in(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut fs = self.fs.borrow_mut();
        Ok(fs.dir(dir)?.live.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step("fsync dir", |fs| {
            let d = fs.dir(dir)?;
            d.durable = d.live.clone();
            d.since_sync.clear();
            Ok(())
        })
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.step("mkdir", |fs| {
            if fs.dirs.contains_key(path) || fs.lookup(path).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let (dir, name) = Fs::split(path)?;
            fs.inodes.push(Inode::default());
            let ino = fs.inodes.len() - 1;
            fs.change(&dir, Change::Set(name, ino))?;
            fs.dir_inodes.insert(ino);
            fs.made.insert(path.to_path_buf());
            fs.dirs.insert(path.to_path_buf(), DirState::default());
            Ok(())
        })
    }
}

/// Replays what `Real` did under a recording (`fsx/trace.rs`) over a model that starts
/// with `dirs` and `files`, all durable, and checks `check(point, is_last, state)` over
/// every state of every recovery point of the real run (as [`violations`] does, one point
/// at a time, so that files of megabytes fit). A recorded checkpoint becomes the point's
/// note: the largest offset recorded so far.
pub(crate) fn replay(
    dirs: &[PathBuf],
    files: &[(PathBuf, Vec<u8>)],
    ops: &[Op],
    check: impl Fn(&Point, bool, &Recovered) -> Option<String>,
) -> (Vec<String>, usize) {
    let model = Model::with(dirs, files);
    let (mut found, mut states) = (Vec::new(), 0);
    let mut take = |model: &Model, i: usize, end: bool| {
        let points = model.take_points();
        let n = points.len();
        for (j, point) in points.iter().enumerate() {
            for state in &point.states {
                states += 1;
                if let Some(problem) = check(point, end && j + 1 == n, state) {
                    if found.len() < 5 {
                        let state = describe(state);
                        found.push(format!("after op {i} ({}): {problem}: {state}", point.op));
                    }
                }
            }
        }
    };
    let mut inodes: HashMap<u64, usize> = HashMap::new();
    let file = |inodes: &HashMap<u64, usize>, ino: &u64| {
        *inodes
            .get(ino)
            .unwrap_or_else(|| panic!("inode {ino} was not opened under the recording"))
    };
    for (i, op) in ops.iter().enumerate() {
        let done = match op {
            Op::CreateNew { path, ino } => model.create_new(path).map(|m| {
                inodes.insert(*ino, m);
            }),
            Op::OpenPartial { path, ino } => model.open_partial(path).map(|(m, _)| {
                inodes.insert(*ino, m);
            }),
            Op::Write { ino, bytes } => model.write_all(&mut file(&inodes, ino), bytes),
            Op::Truncate { ino, len } => model.truncate(&mut file(&inodes, ino), *len),
            Op::SyncAll { ino } => model.sync_all(&file(&inodes, ino)),
            Op::SyncData { ino } => model.sync_data(&file(&inodes, ino)),
            Op::Rename { from, to } => model.rename(from, to),
            Op::HardLink { from, to } => model.hard_link(from, to),
            Op::Remove { path } => model.remove_file(path),
            Op::CreateDir { path } => model.create_dir(path),
            Op::SyncDir { dir } => model.sync_dir(dir),
            Op::Recorded { path, offset } if model.live().contains_key(path) => {
                let note = (*model.note.borrow()).max(*offset);
                model.set_note(note);
                Ok(())
            }
            Op::Recorded { .. } => Err(io::ErrorKind::NotFound.into()),
        };
        if let Err(e) = done {
            panic!("the model refused {op:?}, which the real filesystem did: {e}");
        }
        take(&model, i, i + 1 == ops.len());
    }
    if ops.is_empty() {
        take(&model, 0, true);
    }
    (found, states)
}

/// A recovered state in short: each path's length and first bytes.
fn describe(state: &Recovered) -> String {
    let files: Vec<String> = state
        .iter()
        .map(|(p, c)| {
            format!(
                "{}: {} bytes {:?}…",
                p.display(),
                c.len(),
                &c[..c.len().min(4)]
            )
        })
        .collect();
    format!("{{{}}}", files.join(", "))
}

/// Checks `check(point, is_last, state)` over every state of every point; the violations
/// (at most a few, each naming its point) and how many states were checked.
pub(crate) fn violations(
    points: &[Point],
    check: impl Fn(&Point, bool, &Recovered) -> Option<String>,
) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut states = 0;
    for (i, point) in points.iter().enumerate() {
        let last = i + 1 == points.len();
        for state in &point.states {
            states += 1;
            if let Some(problem) = check(point, last, state) {
                if found.len() < 5 {
                    found.push(format!("after op {i} ({}): {problem}: {state:?}", point.op));
                }
            }
        }
    }
    (found, states)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "/m/d";

    fn p(name: &str) -> PathBuf {
        Path::new(D).join(name)
    }

    /// After a restart the start-up sweep runs; in every recovered state it leaves no
    /// temporary and touches nothing else.
    fn sweep_problem(state: &Recovered) -> Option<String> {
        let model = Model::from_recovered(&[D], state);
        sweep_temporaries_on(&model, Path::new(D)).ok()?;
        let after = model.live();
        let mut kept = state.clone();
        kept.retain(|k, _| !k.to_string_lossy().ends_with(TEMP_SUFFIX));
        (after != kept).then(|| format!("the sweep left {after:?}"))
    }

    fn assert_clean(what: &str, (found, states): (Vec<String>, usize)) {
        assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
        assert!(states > 2, "{what}: only {states} states checked");
        eprintln!("power loss, {what}: {states} recovery states, 0 violations");
    }

    #[test]
    fn write_atomic_leaves_the_old_or_the_new_file_and_the_new_once_it_returned() {
        let model = Model::new(&[D], &[("/m/d/status.json", b"old status")]);
        write_atomic_on(&model, &p("status.json"), b"the new status").unwrap();
        let points = model.take_points();
        assert_clean(
            "write_atomic over an existing file",
            violations(&points, |_, last, s| {
                let got = s.get(&p("status.json"))?;
                if last && got != b"the new status" {
                    return Some("not the new file after write_atomic returned".into());
                }
                if got != b"old status" && got != b"the new status" {
                    return Some("torn or empty".into());
                }
                sweep_problem(s)
            }),
        );
        // A fresh file: none, or the whole new one.
        let model = Model::new(&[D], &[]);
        write_atomic_on(&model, &p("ca.pem"), b"certificate").unwrap();
        assert_clean(
            "write_atomic of a new file",
            violations(&model.take_points(), |_, last, s| {
                match s.get(&p("ca.pem")) {
                    None if last => Some("lost after write_atomic returned".into()),
                    Some(c) if c != b"certificate" => Some("torn or empty".into()),
                    _ => sweep_problem(s),
                }
            }),
        );
    }

    #[test]
    fn write_new_private_leaves_no_file_or_the_whole_file_and_never_replaces() {
        let model = Model::new(&[D], &[]);
        write_new_private_on(&model, &p("admin-password"), b"secret\n").unwrap();
        assert_clean(
            "write_new_private",
            violations(&model.take_points(), |_, last, s| {
                match s.get(&p("admin-password")) {
                    None if last => Some("lost after write_new_private returned".into()),
                    Some(c) if c != b"secret\n" => Some("torn or empty".into()),
                    _ => sweep_problem(s),
                }
            }),
        );
        // An existing file is refused and stays as it was in every state.
        let model = Model::new(&[D], &[("/m/d/admin-password", b"first\n")]);
        let err = write_new_private_on(&model, &p("admin-password"), b"second\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_clean(
            "write_new_private over an existing file",
            violations(&model.take_points(), |_, _, s| {
                (s.get(&p("admin-password")).map(Vec::as_slice) != Some(b"first\n"))
                    .then(|| "the existing file changed".into())
                    .or_else(|| sweep_problem(s))
            }),
        );
    }

    #[test]
    fn a_durable_remove_is_gone_once_it_returned_and_a_durable_rename_is_there() {
        let model = Model::new(&[D], &[("/m/d/certificate.pem", b"cert")]);
        remove_file_durable_on(&model, &p("certificate.pem")).unwrap();
        assert_clean(
            "remove_file_durable",
            violations(&model.take_points(), |_, last, s| {
                match s.get(&p("certificate.pem")) {
                    Some(_) if last => Some("back after remove_file_durable returned".into()),
                    Some(c) if c != b"cert" => Some("torn".into()),
                    _ => None,
                }
            }),
        );
        let model = Model::new(&[D], &[("/m/d/a", b"content")]);
        rename_durable_on(&model, &p("a"), &p("b")).unwrap();
        assert_clean(
            "rename_durable",
            violations(&model.take_points(), |_, last, s| {
                let (a, b) = (s.get(&p("a")), s.get(&p("b")));
                match (a, b) {
                    (Some(_), None) if last => Some("the rename was lost".into()),
                    (Some(x), None) | (None, Some(x)) if x == b"content" => None,
                    _ => Some("neither or both names, or torn".into()),
                }
            }),
        );
    }

    /// The recycle bin's move: the file is under its old name, under both, or under its
    /// new one at every point, never lost and never torn; only under the new one once
    /// `move_durable` returned; and an existing file at the new name is never replaced.
    #[test]
    fn a_durable_move_never_loses_the_file_and_never_replaces() {
        const BIN: &str = "/m/bin";
        let bin = |name: &str| Path::new(BIN).join(name);
        let model = Model::new(&[D, BIN], &[("/m/d/backup", b"content")]);
        move_durable_on(&model, &p("backup"), &bin("0000000000000001")).unwrap();
        assert_clean(
            "move_durable",
            violations(&model.take_points(), |_, last, s| {
                let (from, to) = (s.get(&p("backup")), s.get(&bin("0000000000000001")));
                if [from, to].into_iter().flatten().any(|c| c != b"content") {
                    return Some("torn".into());
                }
                match (from, to) {
                    (None, None) => Some("lost under both names".into()),
                    (Some(_), _) if last => Some("still under the old name".into()),
                    (_, None) if last => Some("not under the new name".into()),
                    _ => None,
                }
            }),
        );
        let model = Model::new(
            &[D, BIN],
            &[("/m/d/backup", b"restored"), ("/m/bin/x", b"in the bin")],
        );
        let err = move_durable_on(&model, &bin("x"), &p("backup")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            model.live().get(&p("backup")).map(Vec::as_slice),
            Some(&b"restored"[..])
        );
        assert_eq!(
            model.live().get(&bin("x")).map(Vec::as_slice),
            Some(&b"in the bin"[..])
        );
    }

    /// The receiver's path for one file: write, checkpoint (record the offset only once
    /// the fdatasync returned), more unsynced bytes; a crash; resume from the recorded
    /// offset; the rest; fsync and rename into place; the directory fsync. At every point
    /// the final name is absent or holds the whole file, the partial holds at least the
    /// recorded prefix, and from every recovered state the resume completes the file.
    #[test]
    fn a_partial_file_shows_only_whole_files_and_keeps_every_recorded_checkpoint() {
        let full = b"0123456789abcdefghij".to_vec();
        let (part, fin) = (p(".backup.img.replgate-part"), p("backup.img"));
        let model = Model::new(&[D], &[]);
        let mut f = PartialFile::open_on(&model, &part, 0).unwrap();
        f.write_all(&full[..8]).unwrap();
        f.checkpoint().unwrap();
        model.set_note(8);
        f.write_all(&full[8..14]).unwrap();
        drop(f);
        // The daemon restarts here (on the live state; the power-loss states follow).
        let mut f = PartialFile::open_on(&model, &part, 8).unwrap();
        f.write_all(&full[8..]).unwrap();
        f.sync_all().unwrap();
        f.rename_into(&fin).unwrap();
        model.sync_dir(Path::new(D)).unwrap();
        model.set_note(u64::MAX);
        let points = model.take_points();
        let result = violations(&points, |point, _, s| {
            let recorded = point.note;
            match (s.get(&fin), s.get(&part)) {
                (Some(c), _) if c != &full => Some("a partial file under the final name".into()),
                (Some(_), Some(_)) if recorded == u64::MAX => {
                    Some("the partial is still there after the directory fsync".into())
                }
                (Some(_), _) => None,
                (None, _) if recorded == u64::MAX => {
                    Some("the file is not there after the directory fsync".into())
                }
                (None, None) if recorded > 0 => Some("the partial is gone".into()),
                (None, None) => None,
                (None, Some(c)) => {
                    let keep = recorded.min(8) as usize;
                    if c.len() < keep || c[..keep] != full[..keep] {
                        return Some(format!("the partial lost its recorded {keep} bytes"));
                    }
                    // Resume from the recorded offset, as the receiver does, and finish.
                    let again = Model::from_recovered(&[D], s);
                    let mut f = PartialFile::open_on(&again, &part, keep as u64).ok()?;
                    f.write_all(&full[keep..]).ok()?;
                    f.sync_all().ok()?;
                    f.rename_into(&fin).ok()?;
                    again.sync_dir(Path::new(D)).ok()?;
                    let done = again.live();
                    (done.get(&fin) != Some(&full) || done.contains_key(&part))
                        .then(|| format!("the resume ended with {done:?}"))
                }
            }
        });
        let resumed: usize = points
            .iter()
            .map(|point| {
                point
                    .states
                    .iter()
                    .filter(|s| !s.contains_key(&fin) && s.contains_key(&part))
                    .count()
            })
            .sum();
        assert!(resumed > 10, "only {resumed} states resumed");
        assert_clean("partial file, checkpoint, resume and rename", result);
    }

    /// The receiver's group commit: each file fsynced, (the database marks them verified),
    /// each renamed into place, the directory fsynced once, and only then the
    /// outcome `Committed` goes to the source. At every point a final name is absent or
    /// holds its whole file; once the directory fsync returned, every file of the group
    /// is there.
    #[test]
    fn a_group_commit_shows_only_whole_files_and_all_of_them_after_the_directory_fsync() {
        let files: Vec<(PathBuf, PathBuf, Vec<u8>)> = (0..3)
            .map(|i| {
                (
                    p(&format!(".f{i}.replgate-part")),
                    p(&format!("f{i}")),
                    format!("content of file {i}").into_bytes(),
                )
            })
            .collect();
        let model = Model::new(&[D], &[]);
        let mut open = Vec::new();
        for (part, _, content) in &files {
            let mut f = PartialFile::open_on(&model, part, 0).unwrap();
            f.write_all(content).unwrap();
            open.push(f);
        }
        // The sealer threads: fsync each file; the database marks them verified; the
        // committer renames each into place.
        for f in &open {
            f.sync_all().unwrap();
        }
        model.set_note(1);
        for (f, (_, fin, _)) in open.into_iter().zip(&files) {
            f.rename_into(fin).unwrap();
        }
        model.sync_dir(Path::new(D)).unwrap();
        model.set_note(2); // Committed may go out now
        assert_clean(
            "group commit of three files",
            violations(&model.take_points(), |point, _, s| {
                for (part, fin, content) in &files {
                    match s.get(fin) {
                        Some(c) if c != content => return Some(format!("{fin:?} is partial")),
                        None if point.note == 2 => return Some(format!("{fin:?} is missing")),
                        Some(_) if point.note == 2 && s.contains_key(part) => {
                            return Some(format!("{part:?} is still there"))
                        }
                        _ => {}
                    }
                }
                None
            }),
        );
    }

    /// The checker can fail: each durable sequence with one step left out is caught, and
    /// the model does let a rename or a new directory vanish until its directory is
    /// fsynced.
    #[test]
    fn the_checker_catches_each_missing_fsync() {
        let old_or_new = |last: bool, s: &Recovered| {
            let got = s.get(&p("f"))?;
            if last && got != b"new" {
                return Some("not new after return".to_string());
            }
            (got != b"old" && got != b"new").then(|| "torn or empty".to_string())
        };
        // No fsync of the temporary: the new name can hold an empty or torn file.
        let model = Model::new(&[D], &[("/m/d/f", b"old")]);
        let mut t = model.create_new(&p("f.tmp")).unwrap();
        model.write_all(&mut t, b"new").unwrap();
        model.rename(&p("f.tmp"), &p("f")).unwrap();
        model.sync_dir(Path::new(D)).unwrap();
        let (found, _) = violations(&model.take_points(), |_, last, s| old_or_new(last, s));
        assert!(
            found.iter().any(|v| v.contains("torn or empty")),
            "{found:?}"
        );
        // No fsync of the directory: after "success" the old file can come back.
        let model = Model::new(&[D], &[("/m/d/f", b"old")]);
        let mut t = model.create_new(&p("f.tmp")).unwrap();
        model.write_all(&mut t, b"new").unwrap();
        model.sync_all(&t).unwrap();
        model.rename(&p("f.tmp"), &p("f")).unwrap();
        let (found, _) = violations(&model.take_points(), |_, last, s| old_or_new(last, s));
        assert!(
            found.iter().any(|v| v.contains("not new after return")),
            "{found:?}"
        );
        // And with both, as write_atomic does, nothing is found.
        let model = Model::new(&[D], &[("/m/d/f", b"old")]);
        write_atomic_on(&model, &p("f"), b"new").unwrap();
        let (found, _) = violations(&model.take_points(), |_, last, s| old_or_new(last, s));
        assert!(found.is_empty(), "{found:?}");
        // A partial renamed into place without its fsync: a torn file under the final name.
        let model = Model::new(&[D], &[]);
        let (mut t, _) = model.open_partial(&p(".g.part")).unwrap();
        model.write_all(&mut t, b"whole file").unwrap();
        model.rename(&p(".g.part"), &p("g")).unwrap();
        model.sync_dir(Path::new(D)).unwrap();
        let (found, _) = violations(&model.take_points(), |_, _, s| {
            s.get(&p("g"))
                .filter(|c| c.as_slice() != b"whole file")
                .map(|_| "torn under the final name".to_string())
        });
        assert!(!found.is_empty());
        // A checkpoint that is only an fdatasync (the bug the model found): the recorded
        // offset can outlive the partial's name; the real checkpoint keeps it.
        let partial_gone = |checkpoint: fn(&PartialFile<&Model>) -> io::Result<()>| {
            let model = Model::new(&[D], &[]);
            let mut f = PartialFile::open_on(&model, &p(".h.part"), 0).unwrap();
            f.write_all(b"01234567").unwrap();
            checkpoint(&f).unwrap();
            model.set_note(8);
            let (found, _) = violations(&model.take_points(), |point, _, s| {
                (point.note == 8 && !s.contains_key(&p(".h.part")))
                    .then(|| "the partial is gone".to_string())
            });
            !found.is_empty()
        };
        assert!(partial_gone(|f| f.sync_data()));
        assert!(!partial_gone(|f| f.checkpoint()));
        // A new directory survives only once its parent was fsynced, and so do the files
        // in it, whatever was fsynced inside.
        let model = Model::new(&[D], &[]);
        let sub = p("sub");
        model.create_dir(&sub).unwrap();
        let mut t = model.create_new(&sub.join("f")).unwrap();
        model.write_all(&mut t, b"x").unwrap();
        model.sync_all(&t).unwrap();
        model.sync_dir(&sub).unwrap();
        let before = model.take_points().pop().unwrap();
        assert!(before.states.iter().any(|s| s.is_empty()));
        model.sync_dir(Path::new(D)).unwrap();
        let after = model.take_points().pop().unwrap();
        assert!(after
            .states
            .iter()
            .all(|s| s.get(&sub.join("f")).map(Vec::as_slice) == Some(b"x")));
        // A renamed file survives only after the directory fsync.
        let model = Model::new(&[D], &[("/m/d/a", b"x")]);
        model.rename(&p("a"), &p("b")).unwrap();
        let before = model.take_points().pop().unwrap();
        assert!(before.states.iter().any(|s| s.contains_key(&p("a"))));
        model.sync_dir(Path::new(D)).unwrap();
        let after = model.take_points().pop().unwrap();
        assert!(after
            .states
            .iter()
            .all(|s| s.contains_key(&p("b")) && !s.contains_key(&p("a"))));
    }
}
