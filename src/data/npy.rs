//! Minimal `.npy` reading and writing for C-order `uint8` arrays (format versions 1.0 and 2.0
//! read, 1.0 written).

use std::io::Write;
use std::path::Path;

use super::DataError;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Writes `data` as a `.npy` file (format 1.0, `'|u1'`, C order) of the given `shape`,
/// atomically (a temporary file in the same folder, then renamed over `path`).
/// Errors if the product of `shape` is not `data.len()`.
pub fn write_npy_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<(), DataError> {
    let bytes = encode_npy_u8(shape, data).map_err(|message| DataError::Npy {
        message,
        path: path.to_path_buf(),
    })?;
    write_atomic(path, &bytes)
}

/// Encodes `data` as the bytes of a `.npy` file (format 1.0, `'|u1'`, C order).
pub fn encode_npy_u8(shape: &[usize], data: &[u8]) -> Result<Vec<u8>, String> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if count != data.len() {
        return Err(format!(
            "shape {shape:?} needs {count} values but {} were given",
            data.len()
        ));
    }
    let shape_text = match shape {
        [single] => format!("({single},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded to a multiple of 64,
    // ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| "header too long".to_string())?;
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    Ok(bytes)
}

/// Reads a `.npy` file holding a C-order `uint8` array: returns `(shape, data)`.
pub fn read_npy_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("cannot read file", e, path))?;
    let (shape, range) = parse_npy_u8(&bytes).map_err(|message| DataError::Npy {
        message,
        path: path.to_path_buf(),
    })?;
    Ok((shape, bytes[range].to_vec()))
}

/// Parses the bytes of a `.npy` file holding a C-order `uint8` array: returns the shape and
/// the byte range of the data inside `bytes`. The error is a plain message (no path).
pub fn parse_npy_u8(bytes: &[u8]) -> Result<(Vec<usize>, std::ops::Range<usize>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".to_string());
    }
    let (header_start, header_len) = match bytes[6] {
        1 => (10, usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))),
        2 | 3 if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (
                12,
                usize::try_from(len).map_err(|_| "header too long".to_string())?,
            )
        }
        major => return Err(format!("unsupported format version {major}.{}", bytes[7])),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .ok_or_else(|| "truncated header".to_string())?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text".to_string())?;
    let descr = dict_value(header, "descr")?;
    if !matches!(
        descr.trim_matches(['\'', '"']),
        "|u1" | "<u1" | ">u1" | "u1" | "=u1"
    ) {
        return Err(format!("dtype {descr} is not uint8"));
    }
    if dict_value(header, "fortran_order")? != "False" {
        return Err("Fortran-order arrays are not supported".to_string());
    }
    let shape = parse_shape(&dict_value(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let available = bytes.len() - data_start.min(bytes.len());
    if available != count {
        return Err(format!(
            "shape {shape:?} needs {count} bytes of data but the file has {available}"
        ));
    }
    Ok((shape, data_start..data_start + count))
}

/// The text of the value of `key` in a numpy header dict (up to the next top-level comma).
fn dict_value(header: &str, key: &str) -> Result<String, String> {
    let missing = || format!("header has no {key:?}: {header}");
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|at| at + q.len()))
        .ok_or_else(missing)?;
    let rest = header[start..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(missing)?.trim_start();
    let mut depth = 0usize;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim().to_string()),
            _ => {}
        }
    }
    Err(missing())
}

/// Parses a Python tuple of integers such as `(400, 64, 64)` or `(5,)` or `()`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {text}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape {text}"))
        })
        .collect()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed and synced,
/// then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with a closure that writes the content.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| DataError::io("cannot create a temporary file in", e, dir))?;
    {
        let mut writer = std::io::BufWriter::new(temp.as_file_mut());
        write(&mut writer)
            .and_then(|()| writer.flush())
            .map_err(|e| DataError::io("cannot write file", e, path))?;
    }
    temp.as_file()
        .sync_all()
        .map_err(|e| DataError::io("cannot write file", e, path))?;
    // Temporary files are created private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| DataError::io("cannot set permissions of", e, path))?;
    }
    temp.persist(path)
        .map_err(|e| DataError::io("cannot write file", e.error, path))?;
    Ok(())
}
