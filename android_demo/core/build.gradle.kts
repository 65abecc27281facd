// The plain-Java core: no Android imports, so it compiles and its JUnit tests run on any JDK. CI does not use
// this file: tests/test_android_core.py compiles the same sources with javac and runs JUnit itself, with the
// fixtures the Python SDK writes (without them the parity tests are skipped, see Fixtures.java).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_11
    targetCompatibility = JavaVersion.VERSION_11
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("java.awt.headless", "true")
    System.getProperty("pocketformer.fixtures")?.let { systemProperty("pocketformer.fixtures", it) }
    System.getProperty("pocketformer.out")?.let { systemProperty("pocketformer.out", it) }
}
