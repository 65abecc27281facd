plugins {
    id("com.android.application")
}

android {
    namespace = "dev.pocketformer.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.pocketformer.demo"
        // 26: the core reads bundles with java.nio.file (API 26+); both runtimes' AARs support it.
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // ExecuTorch's AAR ships arm64-v8a and x86_64 (emulator) libraries; LiteRT more.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    packaging {
        // both runtimes bring libc++_shared.so
        jniLibs { pickFirsts += listOf("**/libc++_shared.so") }
    }
}

dependencies {
    implementation(project(":core"))
    implementation("org.pytorch:executorch-android:1.0.1")   // .pte, XNNPACK backend
    implementation("com.google.ai.edge.litert:litert:1.4.0")  // .tflite, org.tensorflow.lite.Interpreter
    // ExecuTorch's Java binding loads its native library through these (declared by its AAR too).
    implementation("com.facebook.soloader:soloader:0.10.5")
    implementation("com.facebook.fbjni:fbjni:0.5.1")
}
