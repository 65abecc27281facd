// Versions are pinned here and in the modules; none could be resolved on the machine this was written on
// (no Maven access): see README.md, "What was built here".
plugins {
    id("com.android.application") version "8.7.3" apply false
}
