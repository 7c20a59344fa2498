//! Load generator: the measuring instrument (in progress).
