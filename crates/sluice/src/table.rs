//! Plain-text tables for people: columns left-aligned and separated by two spaces, no borders,
//! no colour, no trailing spaces. Machine readers use `--output json` instead.

use std::fmt::Write as _;

/// Separates columns.
const GAP: &str = "  ";

/// `rows` as aligned lines, each ending in a newline. The first row is usually the header.
pub fn render(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(column) => *column = (*column).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            write!(line, "{cell:<width$}{GAP}").expect("writing to a String cannot fail");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::render;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|cell| (*cell).to_owned()).collect()
    }

    #[test]
    fn columns_align_to_the_widest_cell() {
        let rows = [row(&["NAME", "N"]), row(&["orders", "12"]), row(&["a", "3"])];
        assert_eq!(render(&rows), "NAME    N\norders  12\na       3\n");
        assert_eq!(render(&[]), "");
    }
}
