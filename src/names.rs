//! The one name table: every enum whose values have a public name (the outcome,
//! the stage, the mode, the initiator, ...) is declared through [`named!`], which
//! gives each value its name once, for `Display`, the JSON of the examples and
//! the C API's name functions alike (and the value's number, the position in the
//! list, for the C constants).

use std::ffi::CStr;

/// Declares a field-less enum whose values have public names:
///
/// ```text
/// named! {
///     /// docs
///     #[derive(...)]
///     pub enum Stage {
///         /// docs
///         Flush => "flush",
///         ...
///     }
/// }
/// ```
///
/// gives `Stage::ALL` (every value, in the order of the C constants),
/// `as_str()`, `Display`, and, for the C API, `as_cstr()`, `number()` and
/// `from_number()`.
macro_rules! named {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every value, in the order of the C API's constants.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            #[doc = concat!("The public name: ", $("`", $text, "` "),*, "(the same in logs, JSON and C).")]
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// The public name as a static C string.
            #[allow(dead_code)]
            pub(crate) fn as_cstr(self) -> &'static ::std::ffi::CStr {
                match self {
                    $( $name::$variant => $crate::names::cstr(concat!($text, "\0")), )*
                }
            }

            /// The value's number in the C API: its position in `ALL`.
            #[allow(dead_code)]
            pub(crate) fn number(self) -> u32 {
                self as u32
            }

            /// The value of a C API number, if there is one.
            #[allow(dead_code)]
            pub(crate) fn from_number(number: u32) -> Option<$name> {
                Self::ALL.get(number as usize).copied()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use named;

/// A NUL-terminated literal as a `CStr` (the names have no interior NUL).
pub(crate) const fn cstr(with_nul: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(c) => c,
        Err(_) => c"unknown",
    }
}
