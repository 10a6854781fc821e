"""The app's screens, each imported when first shown."""
