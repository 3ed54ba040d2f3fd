"""Reading places off an OSM Carto render: labels as evidence, roads as block edges, buildings whole,
a shared fill told apart by the other class's red marks. Images are drawn with the style's own colours
(resources/legends/osm_carto.json); the real render is scored in test_realmaps.py."""
import numpy as np
import pytest

from backend.reasoners.legend import Legend, hex_rgb, place_mask, text_pixels
from backend.resources import resource

LAND, ROAD, BUILDING, FILL = hex_rgb("#f2efe9"), hex_rgb("#ffffff"), hex_rgb("#d9d0c9"), hex_rgb("#ffffe5")
EDU_TEXT, HEALTH = hex_rgb("#4c4c00"), hex_rgb("#bf0000")
SCHOOLS = ["school", "university", "kindergarten"]


@pytest.fixture(scope="module")
def legend():
    return Legend(resource("legends", "osm_carto.json"))


def _word(img, x, y, colour, letters=5):
    """A word as Carto writes it: letters in the label colour, a white halo blended around them."""
    for i in range(letters):
        x0 = x + i * 6
        img[y - 1:y + 9, x0 - 1:x0 + 5] = (np.array(img[y - 1:y + 9, x0 - 1:x0 + 5], float) * 0.4 + 255 * 0.6)
        img[y:y + 8, x0:x0 + 4] = colour
        img[y + 2:y + 6, x0 + 1:x0 + 3] = np.array(colour) * 0.8 + 255 * 0.2   # antialiased stroke


def _town():
    """Two street blocks of houses on bare land, a road between them; 1 px = 1 m."""
    img = np.zeros((120, 200, 3), np.uint8)
    img[:] = LAND
    img[:, 98:104] = ROAD                  # a street between the blocks
    img[:4, :] = img[-4:, :] = ROAD
    for x0 in (6, 106):
        for bx in range(x0, x0 + 84, 14):  # rows of houses with bare yards between them
            img[10:50, bx:bx + 12] = BUILDING
            img[64:110, bx:bx + 12] = BUILDING
    return img


def test_words_are_found_and_small_marks_are_not():
    img = _town()
    _word(img, 20, 55, EDU_TEXT)
    img[30:34, 150:154] = EDU_TEXT          # a 4 px childcare dot in the same colour
    words = text_pixels(img, [EDU_TEXT])
    assert words[55:63, 20:48].sum() >= 25 and not words[:, 140:].any()


def test_a_school_known_only_by_its_label_takes_its_houses_and_stays_in_its_block(legend):
    img = _town()
    img[4:116, 0:98] = BUILDING             # the school's buildings fill its block, wall to wall ...
    img[4:116, 0:98:14] = hex_rgb("#c4b6ab")
    img[50:64, 0:98] = hex_rgb("#f5dcba")   # ... around a yard, a colour Carto draws on top of areas
    _word(img, 20, 53, EDU_TEXT)
    colours, _ = legend.colours_for(SCHOOLS)
    mask = place_mask(img, legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert mask[20:40, 10:80].mean() > 0.9 and mask[70:100, 10:80].mean() > 0.9   # both sides of the yard
    assert not mask[:, 100:].any()                  # not across the street
    assert not mask[116:, :].any()                  # nor onto the road


def test_a_building_joins_whole_or_not_at_all(legend):
    img = _town()
    img[10:50, 20:32] = FILL                # school grounds where one house stood ...
    img[10:50, 48:60] = FILL
    colours, _ = legend.colours_for(SCHOOLS)
    mask = place_mask(img, legend, colours, 1.0, legend.label_colours(SCHOOLS))
    house = mask[12:48, 34:46]              # ... and the house between them
    assert house.all() or not house.any()


def test_a_shared_fill_labelled_in_red_is_the_hospital_not_a_school(legend):
    img = _town()
    img[14:46, 10:88] = FILL                # two areas of the fill schools and hospitals share
    img[68:106, 110:188] = FILL
    _word(img, 20, 24, HEALTH)              # the first carries a hospital's red name
    _word(img, 120, 80, EDU_TEXT)           # the second a school's
    colours, others = legend.colours_for(SCHOOLS)
    assert "hospital" in others
    schools = place_mask(img, legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert not schools[14:46, 10:88].any() and schools[70:104, 112:186].mean() > 0.9
    colours, _ = legend.colours_for(["hospital"])
    hospitals = place_mask(img, legend, colours, 1.0, legend.label_colours(["hospital"]))
    assert hospitals[16:44, 12:86].mean() > 0.9 and not hospitals[68:106, 110:188].any()


def test_the_legend_keeps_parking_inside_places(legend):
    # @living-street-fill (#ededed) lies within the tolerance of @parking (#eeeeee): listing it as
    # 'outside' made every school's car park a road.
    img = np.zeros((4, 4, 3), np.uint8)
    img[:] = hex_rgb("#eeeeee")
    from backend.reasoners.legend import INSIDE
    assert (legend.categories(img, []) == INSIDE).all()


def _campus(split_px: int, road=ROAD):
    """Two halves of a school's fill, split by a road `split_px` wide; 1 px = 1 m."""
    img = np.zeros((120, 120, 3), np.uint8)
    img[:] = LAND
    img[10:110, 10:110] = FILL
    img[10:20, 20:40] = img[80:100, 60:90] = BUILDING
    img[60:60 + split_px, :] = road
    return img


def test_a_service_road_through_a_campus_is_part_of_it_and_a_wide_street_is_not(legend):
    colours, _ = legend.colours_for(SCHOOLS)
    narrow = place_mask(_campus(7), legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert narrow[60:67, 16:104].all()                        # the service road between the halves
    assert not narrow[60:67, :8].any()                        # not where it runs outside the campus
    wide = place_mask(_campus(12), legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert wide[20:58, 12:108].all() and wide[74:108, 12:108].all() and not wide[62:70, :].any()


def test_a_red_mark_on_one_wing_makes_the_whole_hospital_theirs(legend):
    img = _campus(7)                        # a hospital's two wings across its own service road
    _word(img, 30, 30, HEALTH)              # its red name on the first wing only
    colours, _ = legend.colours_for(SCHOOLS)
    schools = place_mask(img, legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert not schools.any()


def test_a_label_grows_past_line_blends_but_not_into_other_land_use(legend):
    """Carto draws a car park's outline and a road's casing in neutral grey; their antialiased
    pixels lie within the tolerance of @residential (#e0dfdf). They are not land use: a school known
    by its label reaches past them. A strip of real residential fill stops it."""
    def block(between):
        img = _town()
        img[4:116, 0:98] = BUILDING
        img[4:116, 0:98:14] = hex_rgb("#c4b6ab")
        img[84:98, 0:98] = hex_rgb("#eeeeee")               # the school's car park ...
        img[94:98, 0:98] = between
        _word(img, 20, 70, EDU_TEXT)
        return img
    colours, _ = legend.colours_for(SCHOOLS)
    labels = legend.label_colours(SCHOOLS)
    outlined = block((224, 224, 224))                        # ... its outline blended into the lot
    assert place_mask(outlined, legend, colours, 1.0, labels)[100:114, 10:80].mean() > 0.9
    residential = block(hex_rgb("#e0dfdf"))                  # ... or houses' land use beyond it
    assert place_mask(residential, legend, colours, 1.0, labels)[100:114, 10:80].mean() < 0.1


def test_a_red_name_written_at_the_edge_of_the_fill_still_marks_it(legend):
    # Carto's white halo around a label reads as road, so letters at the fill's edge can fall just
    # outside the fill's region; they still say whose region it is
    img = np.zeros((100, 120, 3), np.uint8)
    img[:] = LAND
    img[10:60, 10:110] = FILL
    img[46:60, 28:62] = ROAD                # the halo: as white as a road, all round the name
    _word(img, 30, 49, HEALTH)
    colours, _ = legend.colours_for(SCHOOLS)
    assert not place_mask(img, legend, colours, 1.0, legend.label_colours(SCHOOLS)).any()


def _park_street(fill):
    """A park (or a school's grounds) in the west of a street block, a church built against it in the
    east with lanes round its other sides, a pavilion standing by a pond inside; 1 px = 1 m. Carto
    outlines every building."""
    img = np.zeros((100, 140, 3), np.uint8)
    img[:] = ROAD
    img[10:90, 10:130] = LAND
    img[10:90, 10:80] = fill
    img[40:52, 52:66] = hex_rgb("#aad3df")      # a pond ...
    img[30:40, 54:64] = BUILDING                # ... and a pavilion on its shore, the park around it
    img[14:76, 80:102] = ROAD                   # the church, its west wall on the fill, streets round the rest
    img[20:70, 80:96] = BUILDING
    for y0, y1, x0, x1 in ((30, 40, 54, 64), (20, 70, 80, 96)):
        img[y0 - 1:y1 + 1, x0 - 1:x1 + 1][[0, -1], :] = hex_rgb("#c4b6ab")
        img[y0 - 1:y1 + 1, x0 - 1:x1 + 1][:, [0, -1]] = hex_rgb("#c4b6ab")
    return img


def test_a_park_holds_the_pavilion_in_it_but_not_the_church_beside_it(legend):
    colours, _ = legend.colours_for(["park"])
    park = place_mask(_park_street(hex_rgb("#c8facc")), legend, colours, 1.0, legend.label_colours(["park"]))
    assert park[31:39, 55:63].all()             # the pavilion, in the park on every side but the pond's
    assert not park[22:68, 82:94].any()         # the church only touches it on one side


def test_a_school_keeps_a_building_its_grounds_touch_on_one_side(legend):
    # a school's fill shows between its buildings, often on one side of them only: not open land
    colours, _ = legend.colours_for(SCHOOLS)
    school = place_mask(_park_street(FILL), legend, colours, 1.0, legend.label_colours(SCHOOLS))
    assert school[22:68, 82:94].all()
