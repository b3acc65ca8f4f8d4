//! Files of a forwarded kanban as a stream of chunks (issue #18; upstream's Send Anything moved
//! files in 128 kB chunks): the wire format of one chunk and the receiving side's staging area.
//!
//! The sender publishes each file as [`CHUNK_SIZE`] pieces ([`encode_chunk`]), each one
//! confirmed by the broker, then a commit naming every file's size and sha256 ([`Manifest`]).
//! The receiver writes each chunk at its offset into `<data>/.aion-inbound/<transfer>/<index>`
//! ([`Staging::write_chunk`]), outside every microservice's directory, and on the commit
//! ([`Staging::commit`]) checks every file's size and sha256, then renames the files into the
//! destination directory: a partial or corrupt file is never visible under its name. Memory is
//! one chunk per delivery in flight, whatever the file size.
//!
//! The router sends a forwarded kanban's files this way ([`send_files`], `router::forward`) and
//! receives them in `handle_inbound`; a kanban without files still travels as one message, and a
//! receiver still accepts files inline (older senders).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of file content per chunk message.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// First bytes of a chunk message's body (a kanban is JSON and never starts with them).
pub const CHUNK_MAGIC: &[u8] = b"AIONCHUNK1\n";
/// The staging directory under the data directory.
pub const STAGING_DIR: &str = ".aion-inbound";

/// Where one chunk belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// The transfer (32 lowercase hex digits, [`new_id`]).
    pub transfer: String,
    /// Index of the file in the manifest.
    pub file: usize,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
}

/// What a commit promises: every file of the transfer, with its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub transfer: String,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name (no directories) under the destination directory.
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// Refused for good (dead-letter): a malformed message.
    #[error("{0}")]
    Invalid(String),
    /// Not all bytes are there (yet): chunks may still be on their way.
    #[error("transfer {transfer}: file `{name}` has {have} of {size} bytes or a wrong sha256")]
    Incomplete {
        transfer: String,
        name: String,
        have: u64,
        size: u64,
    },
    /// Disk trouble: keep the message and retry.
    #[error("{0}")]
    Io(String),
}

/// Why sending a kanban's files failed; the caller retries the whole transfer under a new id.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending {name}: {source}")]
    Publish {
        name: String,
        #[source]
        source: crate::amqp::AmqpError,
    },
    #[error("sending {name}: {source}")]
    Unconfirmed {
        name: String,
        #[source]
        source: crate::amqp::AmqpError,
    },
    /// The last chunks' confirms (after every file was read).
    #[error(transparent)]
    Confirm(#[from] crate::amqp::AmqpError),
}

/// A fresh transfer id (128 random bits, hex).
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn check_id(id: &str) -> Result<(), TransferError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(TransferError::Invalid(format!("bad transfer id `{id}`")))
    }
}

fn check_name(name: &str) -> Result<(), TransferError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(TransferError::Invalid(format!("bad file name `{name}`")))
    }
}

/// The body of a chunk message: [`CHUNK_MAGIC`], the header as one JSON line, the bytes.
pub fn encode_chunk(h: &ChunkHeader, data: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(h).expect("a chunk header serialises");
    let mut out = Vec::with_capacity(CHUNK_MAGIC.len() + header.len() + 1 + data.len());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&header);
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// `None` when `body` is not a chunk (a kanban or a commit); the header and the bytes otherwise.
pub fn decode_chunk(body: &[u8]) -> Option<Result<(ChunkHeader, &[u8]), TransferError>> {
    let rest = body.strip_prefix(CHUNK_MAGIC)?;
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        return Some(Err(TransferError::Invalid(
            "chunk without a header line".into(),
        )));
    };
    Some(
        serde_json::from_slice::<ChunkHeader>(&rest[..nl])
            .map_err(|e| TransferError::Invalid(format!("chunk header: {e}")))
            .and_then(|h| check_id(&h.transfer).map(|()| (h, &rest[nl + 1..]))),
    )
}

/// Unconfirmed chunks in flight per transfer (bounds the sender's memory to about 4 MiB).
pub const WINDOW: usize = 32;

/// Publish every file of `files` (`(name, path)`) as chunks to `queue` on `ch`, each confirmed
/// by the broker, reading and hashing as it goes; returns the manifest of a new transfer to
/// publish as the commit once this returns. An error means nothing may be committed: the caller
/// retries the whole transfer under a new id (the receiver sweeps the abandoned one).
pub async fn send_files(
    ch: &lapin::Channel,
    dest: &crate::amqp::Destination,
    files: &[(String, PathBuf)],
) -> Result<Manifest, SendError> {
    let queue = dest.routing_key.as_str();
    use std::collections::VecDeque;
    let id = new_id();
    let props = lapin::BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_delivery_mode(2);
    let mut pending = VecDeque::with_capacity(WINDOW);
    let mut entries = Vec::with_capacity(files.len());
    let mut buf = vec![0u8; CHUNK_SIZE];
    for (index, (name, path)) in files.iter().enumerate() {
        let read_error = |source| SendError::Read {
            path: path.clone(),
            source,
        };
        let mut f = File::open(path).map_err(read_error)?;
        let mut h = Sha256::new();
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(read_error)?;
            if n == 0 && offset > 0 {
                break;
            }
            h.update(&buf[..n]);
            let header = ChunkHeader {
                transfer: id.clone(),
                file: index,
                offset,
            };
            let body = encode_chunk(&header, &buf[..n]);
            let c = dest
                .publish(ch, &body, props.clone())
                .await
                .map_err(|source| SendError::Publish {
                    name: name.clone(),
                    source,
                })?;
            pending.push_back(c);
            if pending.len() >= WINDOW
                && let Some(c) = pending.pop_front()
            {
                crate::amqp::confirmed(queue, c).await.map_err(|source| {
                    SendError::Unconfirmed {
                        name: name.clone(),
                        source,
                    }
                })?;
            }
            offset += n as u64;
            if n < CHUNK_SIZE {
                break;
            }
        }
        entries.push(FileEntry {
            name: name.clone(),
            size: offset,
            sha256: hex::encode(h.finalize()),
        });
    }
    for c in pending {
        crate::amqp::confirmed(queue, c).await?;
    }
    Ok(Manifest {
        transfer: id,
        files: entries,
    })
}

/// Fill `buf` unless the file ends first; the number of bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// The sha256 (hex) and size of a file, read in chunks (bounded memory).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// How a commit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The files, verified, now under the destination directory (their paths, in order).
    Stored(Vec<PathBuf>),
    /// This transfer was committed before (a redelivered commit): deliver nothing again.
    Duplicate,
}

/// The receiving side's staging area, `<data>/.aion-inbound`.
pub struct Staging {
    root: PathBuf,
}

impl Staging {
    pub fn new(data_dir: &Path) -> Staging {
        Staging {
            root: data_dir.join(STAGING_DIR),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn done_marker(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.done"))
    }

    /// Write one chunk at its offset (idempotent: a chunk sent again writes the same bytes),
    /// synced before the caller acknowledges it.
    pub fn write_chunk(&self, h: &ChunkHeader, data: &[u8]) -> Result<(), TransferError> {
        check_id(&h.transfer)?;
        if self.done_marker(&h.transfer).exists() {
            return Ok(()); // a late duplicate of a committed transfer
        }
        let dir = self.dir(&h.transfer);
        let io = |e: std::io::Error, p: &Path| TransferError::Io(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(&dir).map_err(|e| io(e, &dir))?;
        let path = dir.join(h.file.to_string());
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(e, &path))?;
        f.seek(SeekFrom::Start(h.offset))
            .map_err(|e| io(e, &path))?;
        f.write_all(data).map_err(|e| io(e, &path))?;
        f.sync_data().map_err(|e| io(e, &path))
    }

    /// Verify every file of `m` (size and sha256) and rename them into `dest`.
    pub fn commit(&self, m: &Manifest, dest: &Path) -> Result<Committed, TransferError> {
        check_id(&m.transfer)?;
        for f in &m.files {
            check_name(&f.name)?;
        }
        if self.done_marker(&m.transfer).exists() {
            return Ok(Committed::Duplicate);
        }
        let dir = self.dir(&m.transfer);
        let io = |e: std::io::Error, p: &Path| TransferError::Io(format!("{}: {e}", p.display()));
        for (i, f) in m.files.iter().enumerate() {
            let path = dir.join(i.to_string());
            let (sha, have) = match hash_file(&path) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0),
                Err(e) => return Err(io(e, &path)),
            };
            if have != f.size || sha != f.sha256 {
                return Err(TransferError::Incomplete {
                    transfer: m.transfer.clone(),
                    name: f.name.clone(),
                    have,
                    size: f.size,
                });
            }
        }
        std::fs::create_dir_all(dest).map_err(|e| io(e, dest))?;
        let mut stored = Vec::with_capacity(m.files.len());
        for (i, f) in m.files.iter().enumerate() {
            let from = dir.join(i.to_string());
            let to = dest.join(&f.name);
            std::fs::rename(&from, &to).map_err(|e| io(e, &to))?;
            stored.push(to);
        }
        let marker = self.done_marker(&m.transfer);
        File::create(&marker).map_err(|e| io(e, &marker))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Committed::Stored(stored))
    }

    /// Remove transfers nothing was written to for `idle` (a sender that gave up, or restarted
    /// under a new id after a link cut) and commit markers older than `keep_done`.
    pub fn sweep(&self, idle: Duration, keep_done: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let now = SystemTime::now();
        let age = |p: &Path| -> Option<Duration> {
            let newest = if p.is_dir() {
                std::fs::read_dir(p)
                    .ok()?
                    .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
                    .chain(std::fs::metadata(p).ok()?.modified().ok())
                    .max()?
            } else {
                std::fs::metadata(p).ok()?.modified().ok()?
            };
            now.duration_since(newest).ok()
        };
        for e in entries.flatten() {
            let p = e.path();
            let is_marker = p.extension().is_some_and(|x| x == "done");
            let limit = if is_marker { keep_done } else { idle };
            if age(&p).is_some_and(|a| a > limit) {
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            transfer: id.into(),
            files: files
                .iter()
                .map(|(name, data)| FileEntry {
                    name: (*name).into(),
                    size: data.len() as u64,
                    sha256: hex::encode(Sha256::digest(data)),
                })
                .collect(),
        }
    }

    fn send(st: &Staging, id: &str, file: usize, data: &[u8], order: impl Iterator<Item = usize>) {
        let chunks: Vec<&[u8]> = data.chunks(7).collect();
        for i in order {
            let h = ChunkHeader {
                transfer: id.into(),
                file,
                offset: (i * 7) as u64,
            };
            let body = encode_chunk(&h, chunks[i]);
            let (h2, bytes) = decode_chunk(&body).unwrap().unwrap();
            assert_eq!(h2, h);
            st.write_chunk(&h2, bytes).unwrap();
        }
    }

    #[test]
    fn chunks_in_any_order_commit_once_and_never_show_a_partial_file() {
        let data_dir = tempfile::tempdir().unwrap();
        let st = Staging::new(data_dir.path());
        let dest = data_dir.path().join("c_1");
        let id = new_id();
        let a: Vec<u8> = (0..100u8).collect();
        let b = b"second file".to_vec();
        let m = manifest(&id, &[("a.bin", &a), ("b.txt", &b)]);
        let n = a.len().div_ceil(7);

        // Half of file a, out of order: the commit is refused, nothing is under `dest`.
        send(&st, &id, 0, &a, (0..n / 2).rev());
        let err = st.commit(&m, &dest).unwrap_err();
        assert!(
            matches!(&err, TransferError::Incomplete { name, size: 100, .. } if name == "a.bin"),
            "{err:?}"
        );
        assert!(!dest.join("a.bin").exists());

        // The rest, and chunks sent again (a restarted transfer): verified and renamed.
        send(&st, &id, 0, &a, 0..n);
        send(&st, &id, 1, &b, 0..b.len().div_ceil(7));
        let got = st.commit(&m, &dest).unwrap();
        assert_eq!(
            got,
            Committed::Stored(vec![dest.join("a.bin"), dest.join("b.txt")])
        );
        assert_eq!(std::fs::read(dest.join("a.bin")).unwrap(), a);
        assert_eq!(std::fs::read(dest.join("b.txt")).unwrap(), b);
        // A redelivered commit delivers nothing again; a late chunk writes nothing.
        assert_eq!(st.commit(&m, &dest).unwrap(), Committed::Duplicate);
        send(&st, &id, 0, &a, 0..1);
        assert!(!data_dir.path().join(STAGING_DIR).join(&id).exists());
    }

    #[test]
    fn a_corrupt_file_is_not_delivered() {
        let data_dir = tempfile::tempdir().unwrap();
        let st = Staging::new(data_dir.path());
        let id = new_id();
        let good = b"0123456789".to_vec();
        let mut bad = good.clone();
        bad[3] = b'x';
        send(&st, &id, 0, &bad, 0..2);
        let m = manifest(&id, &[("f", &good)]);
        assert!(matches!(
            st.commit(&m, &data_dir.path().join("d")),
            Err(TransferError::Incomplete { have: 10, .. })
        ));
        assert!(!data_dir.path().join("d/f").exists());
    }

    #[test]
    fn malformed_ids_names_and_chunks_are_refused() {
        let data_dir = tempfile::tempdir().unwrap();
        let st = Staging::new(data_dir.path());
        let h = ChunkHeader {
            transfer: "../../etc".into(),
            file: 0,
            offset: 0,
        };
        assert!(matches!(
            st.write_chunk(&h, b"x"),
            Err(TransferError::Invalid(_))
        ));
        assert!(matches!(
            decode_chunk(&encode_chunk(&h, b"x")),
            Some(Err(TransferError::Invalid(_)))
        ));
        assert!(decode_chunk(b"{\"connectionKey\":\"default\"}").is_none());
        assert!(matches!(
            decode_chunk(b"AIONCHUNK1\nno newline"),
            Some(Err(TransferError::Invalid(_)))
        ));
        let m = manifest(&new_id(), &[("..", b"")]);
        assert!(matches!(
            st.commit(&m, data_dir.path()),
            Err(TransferError::Invalid(_))
        ));
    }

    #[test]
    fn sweep_removes_idle_transfers_and_old_markers_only() {
        let data_dir = tempfile::tempdir().unwrap();
        let st = Staging::new(data_dir.path());
        let idle = new_id();
        send(&st, &idle, 0, b"abc", 0..1);
        st.sweep(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(st.dir(&idle).exists(), "a fresh transfer is kept");
        std::thread::sleep(Duration::from_millis(20));
        st.sweep(Duration::from_millis(1), Duration::from_secs(3600));
        assert!(!st.dir(&idle).exists(), "an idle transfer is removed");
    }
}
