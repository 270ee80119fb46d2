"""What a command line needs, apart from the book's steps: flags and errors, downloads, MPI."""
