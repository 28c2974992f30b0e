//! Resolving user and group names to numeric ids through the C library
//! (`getpwnam_r`/`getgrnam_r`), so NSS sources (LDAP, systemd-userdb) work too.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::ptr;

/// Largest scratch buffer we are willing to grow to for one lookup.
const MAX_BUFFER: usize = 1 << 20;

/// Errno values that `getpwnam_r(3)`/`getgrnam_r(3)` document as "not found" on some
/// systems (glibc reports not-found as success with a null result).
fn is_not_found(rc: libc::c_int) -> bool {
    matches!(rc, libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM)
}

/// Initial scratch buffer size suggested by `sysconf(key)`, or 1 KiB.
fn initial_buffer(key: libc::c_int) -> usize {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads its argument.
    let hint = unsafe { libc::sysconf(key) };
    usize::try_from(hint)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(1024)
        .min(MAX_BUFFER)
}

/// Runs one reentrant lookup with a growing scratch buffer. `call` performs the C
/// call with the buffer and returns its return code and, when an entry was found,
/// the id read from it.
fn lookup_with_buffer(
    name: &str,
    key: libc::c_int,
    mut call: impl FnMut(&CString, &mut [libc::c_char]) -> (libc::c_int, Option<u32>),
) -> io::Result<Option<u32>> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    let mut len = initial_buffer(key);
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        let (rc, id) = call(&cname, &mut buf);
        match rc {
            0 => return Ok(id),
            libc::ERANGE if len < MAX_BUFFER => len *= 2,
            rc if is_not_found(rc) => return Ok(None),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// Looks up the uid of user `name`; `Ok(None)` if there is no such user.
pub(crate) fn user_id(name: &str) -> io::Result<Option<u32>> {
    lookup_with_buffer(name, libc::_SC_GETPW_R_SIZE_MAX, |cname, buf| {
        let mut entry = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = ptr::null_mut();
        // SAFETY: `cname` is a valid NUL-terminated string; `entry` and `result` are
        // valid for writes; `buf` is a live buffer of exactly `buf.len()` bytes that
        // outlives the call. getpwnam_r writes only into these.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                entry.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        let id = if rc == 0 && !result.is_null() {
            // SAFETY: on success with a non-null result, `result` points to `entry`,
            // which getpwnam_r has fully initialised.
            Some(unsafe { (*result).pw_uid })
        } else {
            None
        };
        (rc, id)
    })
}

/// Looks up the gid of group `name`; `Ok(None)` if there is no such group.
pub(crate) fn group_id(name: &str) -> io::Result<Option<u32>> {
    lookup_with_buffer(name, libc::_SC_GETGR_R_SIZE_MAX, |cname, buf| {
        let mut entry = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = ptr::null_mut();
        // SAFETY: `cname` is a valid NUL-terminated string; `entry` and `result` are
        // valid for writes; `buf` is a live buffer of exactly `buf.len()` bytes that
        // outlives the call. getgrnam_r writes only into these.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                entry.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        let id = if rc == 0 && !result.is_null() {
            // SAFETY: on success with a non-null result, `result` points to `entry`,
            // which getgrnam_r has fully initialised.
            Some(unsafe { (*result).gr_gid })
        } else {
            None
        };
        (rc, id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_user_and_group_resolve_to_zero() {
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_id("root").unwrap(), Some(0));
    }

    #[test]
    fn unknown_names_are_none() {
        assert_eq!(user_id("vdpad-no-such-user").unwrap(), None);
        assert_eq!(group_id("vdpad-no-such-group").unwrap(), None);
    }

    #[test]
    fn nul_byte_is_an_error() {
        assert!(user_id("ro\0ot").is_err());
    }
}
