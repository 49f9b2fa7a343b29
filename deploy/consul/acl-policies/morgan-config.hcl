# Morgan's config watcher: read (and block on) morgan/config/ and morgan/secrets/.
# Writing config is an operator's job, with an operator token.
key_prefix "morgan/config/" {
  policy = "read"
}
key_prefix "morgan/secrets/" {
  policy = "read"
}
